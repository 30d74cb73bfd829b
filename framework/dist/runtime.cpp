#include "framework/dist/runtime.h"

#include "framework/common/error.h"
#include "framework/dist/mpi_check.h"
#include "framework/dist/mpi_handle.h"
#include "framework/system/memory.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <set>

namespace qforge::dist {
namespace {

Runtime* g_runtime = nullptr;

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  long parsed = std::strtol(value, &end, 10);
  return *end == '\0' ? static_cast<int>(parsed) : fallback;
}

int all_reduce_int(MPI_Comm comm, int value, MPI_Op op) {
  int result = 0;
  QF_MPI_CHECK(MPI_Allreduce(&value, &result, 1, MPI_INT, op, comm));
  return result;
}

void free_comm(intptr_t& handle) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  MPI_Comm comm = from_handle(handle);
  if (!finalized && comm != MPI_COMM_NULL && comm != MPI_COMM_WORLD) MPI_Comm_free(&comm);
  handle = to_handle(MPI_COMM_NULL);
}

}  // namespace

LaunchEnv launch_env_from_environment() {
  const std::pair<const char*, const char*> launchers[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                                           {"PMI_RANK", "PMI_SIZE"},
                                                           {"PMIX_RANK", "OMPI_COMM_WORLD_SIZE"},
                                                           {"SLURM_PROCID", "SLURM_NTASKS"}};
  for (const auto& [rank_var, size_var] : launchers) {
    int rank = env_int(rank_var, -1);
    if (rank >= 0) return LaunchEnv{rank, std::max(env_int(size_var, rank + 1), rank + 1)};
  }
  return LaunchEnv{};
}

// ---- Runtime ----------------------------------------------------------------------------------------------

Runtime::Runtime(int* argc, char*** argv) {
  QF_CHECK(g_runtime == nullptr, "qforge::dist::Runtime created twice: MPI is started once per process");
  int initialized = 0;
  MPI_Initialized(&initialized);
  QF_CHECK(!initialized, "MPI was initialised before qforge::dist::Runtime, which owns MPI start-up");
  int provided = 0;
  // A failing MPI_Init aborts inside MPI itself; there is no error code to check.
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  sys::keep_freed_memory();  // after MPI, whose memory hooks may set malloc's thresholds of their own
  g_runtime = this;
  QF_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  QF_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  QF_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  world_ = std::make_unique<Communicator>("world", to_handle(MPI_COMM_WORLD), rank_, size_);
  self_ = std::make_unique<Communicator>("self", to_handle(MPI_COMM_SELF), 0, 1);
  MPI_Comm failure_comm = MPI_COMM_NULL;
  QF_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &failure_comm));
  failure_comm_ = to_handle(failure_comm);
  discover_nodes();
}

Runtime::~Runtime() {
  world_.reset();
  self_.reset();
  free_comm(node_comm_);
  free_comm(failure_comm_);
  g_runtime = nullptr;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Runtime* Runtime::current() { return g_runtime; }

void Runtime::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);  // MPI_Abort does not return; this is for the compiler.
}

int Runtime::agree_on_failure(double timeout_s) {
  int mine = rank_, lowest = -1, done = 0;
  MPI_Request request = MPI_REQUEST_NULL;
  if (MPI_Iallreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, from_handle(failure_comm_), &request) != MPI_SUCCESS) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!done && std::chrono::steady_clock::now() < deadline) {
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -1;
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done ? lowest : -1;
}

void Runtime::discover_nodes() {
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int length = 0;
  QF_MPI_CHECK(MPI_Get_processor_name(name, &length));
  host_name_.assign(name, length);

  MPI_Comm node_comm = MPI_COMM_NULL;
  QF_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_comm));
  node_comm_ = to_handle(node_comm);
  QF_MPI_CHECK(MPI_Comm_rank(node_comm, &local_rank_));
  QF_MPI_CHECK(MPI_Comm_size(node_comm, &local_size_));

  // A node is named by its lowest world rank; nodes are numbered in the order of those ranks.
  const int leader = all_reduce_int(node_comm, rank_, MPI_MIN);
  std::vector<int> leaders(size_);
  QF_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::set<int> distinct(leaders.begin(), leaders.end());
  std::vector<int> ordered(distinct.begin(), distinct.end());
  node_count_ = static_cast<int>(ordered.size());
  node_index_ = static_cast<int>(std::lower_bound(ordered.begin(), ordered.end(), leader) - ordered.begin());
  ranks_per_node_.assign(node_count_, 0);
  for (int l : leaders) ++ranks_per_node_[std::lower_bound(ordered.begin(), ordered.end(), l) - ordered.begin()];
}

// ---- Grid -------------------------------------------------------------------------------------------------

Grid::Grid(Runtime& runtime, int tp) : runtime_(runtime), tp_(tp) {
  const int world = runtime.size();
  if (tp < 1 || world % tp != 0)
    throw UsageError(fmt::format("parallel.tp = {} must be a positive divisor of the world size {} "
                                 "(run with a multiple of {} ranks, or change parallel.tp)", tp, world, tp));
  const int lowest = all_reduce_int(MPI_COMM_WORLD, tp, MPI_MIN);
  const int highest = all_reduce_int(MPI_COMM_WORLD, tp, MPI_MAX);
  if (lowest != highest)
    throw Error(fmt::format("ranks disagree on parallel.tp (from {} to {}): every rank must read the same "
                            "config and --set options", lowest, highest));
  dp_ = world / tp;

  const int rank = runtime.rank();
  MPI_Comm tp_comm = MPI_COMM_NULL, dp_comm = MPI_COMM_NULL;
  QF_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, rank / tp, rank, &tp_comm));
  QF_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, rank % tp, rank, &dp_comm));
  tp_comm_ = to_handle(tp_comm);
  dp_comm_ = to_handle(dp_comm);
  tp_group_ = std::make_unique<Communicator>("tp", tp_comm_, rank % tp, tp);
  dp_group_ = std::make_unique<Communicator>("dp", dp_comm_, rank / tp, dp_);

  const int node = runtime.node_index();
  const bool mine_within = all_reduce_int(tp_comm, node, MPI_MIN) == all_reduce_int(tp_comm, node, MPI_MAX);
  tp_within_nodes_ = all_reduce_int(MPI_COMM_WORLD, mine_within ? 1 : 0, MPI_MIN) == 1;
}

Grid::~Grid() {
  tp_group_.reset();
  dp_group_.reset();
  free_comm(tp_comm_);
  free_comm(dp_comm_);
}

std::string Grid::describe() const { return fmt::format("TP {} x DP {}", tp_, dp_); }

}  // namespace qforge::dist
