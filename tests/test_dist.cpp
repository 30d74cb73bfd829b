// Collectives and the TP x DP grid, run for real as 1, 2 and 4 MPI processes. Expected values are closed forms
// of what each rank contributed, computed here independently of the communicator.
#include "framework/common/error.h"
#include "framework/dist/communicator.h"
#include "framework/dist/mpi_check.h"
#include "framework/dist/runtime.h"

#include <gtest/gtest.h>

#include <climits>
#include <filesystem>
#include <fstream>

namespace qforge::dist {
namespace {

Runtime& runtime() { return *Runtime::current(); }

const std::vector<torch::ScalarType> kDtypes = {torch::kFloat, torch::kDouble, torch::kHalf,  torch::kBFloat16,
                                                torch::kInt8,  torch::kUInt8,  torch::kInt16, torch::kInt32,
                                                torch::kInt64, torch::kBool};
const std::vector<ReduceOp> kOps = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg};

std::vector<int> tp_sizes() {
  std::vector<int> sizes;
  for (int tp = 1; tp <= runtime().size(); ++tp)
    if (runtime().size() % tp == 0) sizes.push_back(tp);
  return sizes;
}

// The groups of a grid, each exercised in turn.
std::vector<Communicator*> groups_of(Grid& grid) { return {&grid.tp_group(), &grid.dp_group(), &grid.world()}; }

std::string trace(const Grid& grid, const Communicator& group, torch::ScalarType dtype, const char* what) {
  return fmt::format("{} on {} group {}/{} of {}, dtype {}", what, group.name(), group.rank(), group.size(),
                     grid.describe(), c10::toString(dtype));
}

// Rank r of the group contributes (r + 1) * (i % 5 + 1) at flat index i (0/1 pattern for bool).
torch::Tensor contribution(int r, int64_t n, torch::ScalarType dtype) {
  torch::Tensor i = torch::arange(n, torch::kLong);
  if (dtype == torch::kBool) return ((i + r) % 2 == 0);
  return ((i % 5 + 1) * (r + 1)).to(dtype);
}

torch::Tensor expected_reduction(int size, int64_t n, torch::ScalarType dtype, ReduceOp op) {
  torch::Tensor i = torch::arange(n, torch::kLong);
  if (dtype == torch::kBool) {
    torch::Tensor even = (i % 2 == 0);
    if (size == 1) return even;
    return torch::full({n}, op != ReduceOp::kMin, torch::kBool);  // some rank has true, some false
  }
  torch::Tensor base = (i % 5 + 1).to(torch::kDouble);
  const double triangle = size * (size + 1) / 2.0;
  torch::Tensor value;
  switch (op) {
    case ReduceOp::kSum: value = base * triangle; break;
    case ReduceOp::kMax: value = base * size; break;
    case ReduceOp::kMin: value = base; break;
    case ReduceOp::kAvg:
      value = base * triangle / size;
      if (!torch::isFloatingType(dtype)) value = value.trunc();
      break;
  }
  return value.to(dtype);
}

void expect_equal(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_TRUE(torch::equal(actual, expected)) << what << "\nactual:\n" << actual << "\nexpected:\n" << expected;
}

TEST(Runtime, RanksMatchTheLauncherAndNodesAddUp) {
  LaunchEnv env = launch_env_from_environment();
  EXPECT_EQ(runtime().rank(), env.rank);
  EXPECT_EQ(runtime().size(), env.size);
  int total = 0;
  for (int ranks : runtime().ranks_per_node()) total += ranks;
  EXPECT_EQ(total, runtime().size());
  EXPECT_EQ(runtime().local_size(), runtime().ranks_per_node()[runtime().node_index()]);
  torch::Tensor leaders = torch::tensor({runtime().local_rank() == 0 ? 1 : 0}, torch::kInt32);
  runtime().world().all_reduce(leaders);
  EXPECT_EQ(leaders.item<int>(), runtime().node_count());
}

TEST(Grid, ConsecutiveRanksFormTensorParallelGroups) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    const int rank = runtime().rank();
    EXPECT_EQ(grid.tp(), tp);
    EXPECT_EQ(grid.dp(), runtime().size() / tp);
    EXPECT_EQ(grid.tp_rank(), rank % tp);
    EXPECT_EQ(grid.dp_rank(), rank / tp);
    EXPECT_EQ(grid.tp_group().size(), tp);
    EXPECT_EQ(grid.dp_group().size(), runtime().size() / tp);
    EXPECT_TRUE(grid.tp_groups_within_nodes());  // one node here
    // The world ranks of my TP group are exactly dp_rank * tp + 0..tp-1.
    torch::Tensor members = grid.tp_group().all_gather(torch::tensor({rank}, torch::kInt32));
    expect_equal(members, torch::arange(grid.dp_rank() * tp, grid.dp_rank() * tp + tp, torch::kInt32), "tp members");
    torch::Tensor replicas = grid.dp_group().all_gather(torch::tensor({rank}, torch::kInt32));
    expect_equal(replicas, torch::arange(grid.tp_rank(), runtime().size(), tp, torch::kInt32), "dp members");
  }
}

TEST(Grid, WorldSizeNotDivisibleByTpIsAUsageError) {
  const int tp = runtime().size() + 1;
  try {
    Grid grid(runtime(), tp);
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("parallel.tp = {}", tp)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(fmt::format("world size {}", runtime().size())), std::string::npos) << e.what();
  }
}

TEST(Communicator, AllReduceEveryOpDtypeAndGroup) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid))
      for (torch::ScalarType dtype : kDtypes)
        for (ReduceOp op : kOps) {
          if (dtype == torch::kBool && op == ReduceOp::kAvg) continue;  // an error, tested below
          const std::string what = trace(grid, *group, dtype, to_string(op));
          torch::Tensor t = contribution(group->rank(), 13, dtype);
          group->all_reduce(t, op);
          expect_equal(t, expected_reduction(group->size(), 13, dtype, op), what);
        }
  }
}

TEST(Communicator, AllReduceWritesBackIntoANonContiguousTensor) {
  Communicator& world = runtime().world();
  torch::Tensor t = contribution(world.rank(), 12, torch::kFloat).view({3, 4}).t();
  ASSERT_FALSE(t.is_contiguous());
  world.all_reduce(t, ReduceOp::kSum);
  expect_equal(t, expected_reduction(world.size(), 12, torch::kFloat, ReduceOp::kSum).view({3, 4}).t(), "transposed");
}

TEST(Communicator, AllGatherConcatenatesInRankOrderAlongAnyDim) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid))
      for (torch::ScalarType dtype : kDtypes) {
        const int n = group->size();
        auto block = [dtype](int r) {
          torch::Tensor v = torch::arange(6, torch::kLong).view({2, 3}) + 10 * r;
          return dtype == torch::kBool ? (v % 3 == 0) : v.to(dtype);
        };
        std::vector<torch::Tensor> blocks;
        for (int r = 0; r < n; ++r) blocks.push_back(block(r));
        torch::Tensor mine = block(group->rank());
        expect_equal(group->all_gather(mine, 0), torch::cat(blocks, 0), trace(grid, *group, dtype, "all_gather dim 0"));
        expect_equal(group->all_gather(mine, 1), torch::cat(blocks, 1), trace(grid, *group, dtype, "all_gather dim 1"));
        expect_equal(group->all_gather(mine, -1), torch::cat(blocks, 1), trace(grid, *group, dtype, "all_gather dim -1"));
      }
  }
}

TEST(Communicator, ReduceScatterGivesEachRankItsReducedPart) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid))
      for (torch::ScalarType dtype : kDtypes)
        for (ReduceOp op : kOps) {
          if (dtype == torch::kBool && op == ReduceOp::kAvg) continue;
          const int n = group->size();
          const int64_t total = 6 * n;
          torch::Tensor full = expected_reduction(n, total, dtype, op);
          // dim 0: rows of [2n, 3]; dim 1: columns of [3, 2n].
          torch::Tensor by_rows = group->reduce_scatter(contribution(group->rank(), total, dtype).view({2 * n, 3}), op, 0);
          expect_equal(by_rows, full.view({2 * n, 3}).chunk(n, 0)[group->rank()],
                       trace(grid, *group, dtype, "reduce_scatter dim 0"));
          torch::Tensor by_cols = group->reduce_scatter(contribution(group->rank(), total, dtype).view({3, 2 * n}), op, 1);
          expect_equal(by_cols, full.view({3, 2 * n}).chunk(n, 1)[group->rank()].contiguous(),
                       trace(grid, *group, dtype, "reduce_scatter dim 1"));
        }
  }
}

TEST(Communicator, IntoVariantsMatchTheAllocatingOnesWithoutCopies) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid)) {
      const int n = group->size();
      torch::Tensor mine = contribution(group->rank(), 6 * n, torch::kFloat);
      torch::Tensor part = torch::full({6}, -1.0f);
      group->reduce_scatter_into(mine, part);
      expect_equal(part, group->reduce_scatter(mine), trace(grid, *group, torch::kFloat, "reduce_scatter_into"));
      torch::Tensor gathered = torch::full({6 * n}, -1.0f);
      const void* where = gathered.data_ptr();
      group->all_gather_into(part, gathered);
      EXPECT_EQ(gathered.data_ptr(), where) << "all_gather_into writes into its output";
      expect_equal(gathered, group->all_gather(part), trace(grid, *group, torch::kFloat, "all_gather_into"));
    }
  }
}

// Communicator::Traffic counts what a ring algorithm sends per rank (closed forms), nothing on one rank.
TEST(Communicator, TrafficCountsRingBytesPerRank) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid)) {
      const double p = group->size(), share = (p - 1) / p;
      const int64_t n = 12 * group->size();
      group->reset_traffic();
      torch::Tensor values = torch::ones({n}, torch::kFloat);  // 4 n bytes
      group->all_reduce(values);
      EXPECT_DOUBLE_EQ(group->traffic().bytes, 2 * share * 4 * n) << "all_reduce on " << group->name();
      torch::Tensor part = group->reduce_scatter(values);
      EXPECT_DOUBLE_EQ(group->traffic().bytes, 3 * share * 4 * n) << "reduce_scatter on " << group->name();
      group->all_gather(part);  // output 4 n bytes
      EXPECT_DOUBLE_EQ(group->traffic().bytes, 4 * share * 4 * n) << "all_gather on " << group->name();
      torch::Tensor doubles = torch::ones({3}, torch::kDouble);
      group->all_reduce(doubles);
      EXPECT_DOUBLE_EQ(group->traffic().bytes, 4 * share * 4 * n + 2 * share * 24) << group->name();
      EXPECT_EQ(group->traffic().calls, p == 1 ? 0 : 4) << group->name();
    }
  }
}

TEST(Communicator, BroadcastCopiesTheRootsValues) {
  for (int tp : tp_sizes()) {
    Grid grid(runtime(), tp);
    for (Communicator* group : groups_of(grid))
      for (torch::ScalarType dtype : kDtypes) {
        const int root = group->size() - 1;
        auto values = [dtype](int r) {
          torch::Tensor v = torch::arange(10, torch::kLong) + 7 * r;
          return dtype == torch::kBool ? (v % 2 == 0) : v.to(dtype);
        };
        torch::Tensor t = values(group->rank());
        group->broadcast(t, root);
        expect_equal(t, values(root), trace(grid, *group, dtype, "broadcast"));
      }
  }
}

TEST(Communicator, BarrierWaitsForEveryRank) {
  Communicator& world = runtime().world();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "qforge_barrier_test";
  if (world.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  world.barrier();
  std::ofstream(dir / std::to_string(world.rank())) << "here";
  world.barrier();
  for (int r = 0; r < world.size(); ++r) EXPECT_TRUE(std::filesystem::exists(dir / std::to_string(r))) << r;
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

// Messages above MPI's int count go in pieces; a piece limit of 3 elements takes that path on small tensors.
TEST(Communicator, MessagesLargerThanOneMpiCallGoInPieces) {
  set_mpi_max_count(3);
  Communicator& world = runtime().world();
  const int n = world.size();
  for (torch::ScalarType dtype : {torch::kFloat, torch::kHalf, torch::kInt64}) {
    torch::Tensor t = contribution(world.rank(), 11, dtype);
    world.all_reduce(t, ReduceOp::kMax);
    expect_equal(t, expected_reduction(n, 11, dtype, ReduceOp::kMax), "pieces all_reduce");

    torch::Tensor mine = (torch::arange(10, torch::kLong) + 100 * world.rank()).to(dtype);
    std::vector<torch::Tensor> all;
    for (int r = 0; r < n; ++r) all.push_back((torch::arange(10, torch::kLong) + 100 * r).to(dtype));
    expect_equal(world.all_gather(mine), torch::cat(all), "pieces all_gather");

    torch::Tensor scattered = world.reduce_scatter(contribution(world.rank(), 10 * n, dtype), ReduceOp::kSum);
    expect_equal(scattered, expected_reduction(n, 10 * n, dtype, ReduceOp::kSum).chunk(n)[world.rank()], "pieces reduce_scatter");

    torch::Tensor b = mine.clone();
    world.broadcast(b, 0);
    expect_equal(b, all[0], "pieces broadcast");
  }
  set_mpi_max_count(INT_MAX);
}

TEST(Communicator, BadArgumentsAreErrorsNamingTheGroup) {
  Communicator& world = runtime().world();
  torch::Tensor flags = torch::ones({4}, torch::kBool);
  EXPECT_THROW(world.all_reduce(flags, ReduceOp::kAvg), Error);
  if (world.size() > 1) {  // any extent splits into one part
    torch::Tensor odd = torch::ones({world.size() * 2 + 1});
    try {
      world.reduce_scatter(odd);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("group 'world'"), std::string::npos) << e.what();
    }
  }
  torch::Tensor t = torch::ones({2});
  EXPECT_THROW(world.broadcast(t, world.size()), Error);
}

TEST(MpiCheck, AFailingCallNamesTheExpressionAndTheRank) {
  int value = 0;
  try {
    QF_MPI_CHECK(MPI_Bcast(&value, 1, MPI_INT, 99999, MPI_COMM_WORLD));
    FAIL() << "MPI_Bcast with an invalid root returned success";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("MPI_Bcast(&value, 1, MPI_INT, 99999, MPI_COMM_WORLD)"), std::string::npos) << message;
    EXPECT_NE(message.find(fmt::format("rank {} of {}", runtime().rank(), runtime().size())), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace qforge::dist
