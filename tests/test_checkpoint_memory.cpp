// Peak resident memory per rank while saving and loading a 223 MB (bf16) model under every TP size of the job:
// saving gathers one tensor at a time (the shard plus the largest tensor, never the model), loading reads each
// tensor straight into bf16 parameters (the shard, no fp32 copy). Measured with VmHWM, reset before each phase.
#include "framework/model/checkpoint_io.h"
#include "framework/system/memory.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <vector>

namespace qforge::model {
namespace {

// Besides the tensors: one 8 MB chunk of mapped file pages while loading, stdio buffers while saving, allocator
// overhead, and what the process maps beside (MPI's shared memory: 12 MB on 1 rank, 31-35 MB on 2-4 ranks).
constexpr double kSlackMb = 48.0;
// Saving, beside the gathered tensor: MPI's shared-memory segments and fragment lists (they grow when 4 ranks share
// 2 cores), what its allgather stages, heap chunks kept from smaller tensors (measured 16 to 43 MB above the tensor
// on 2-4 ranks with this model).
constexpr double kGatherSlackMb = 96.0;
constexpr double kMb = 1048576.0;

ModelConfig wide_llama() {
  ModelConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 1024;
  c.intermediate_size = 2816;
  c.num_layers = 4;
  c.num_heads = 16;
  c.num_kv_heads = 16;
  c.max_positions = 256;
  return c;
}

double worst_over_ranks(double value) {
  torch::Tensor t = torch::tensor({value}, torch::kDouble);
  runtime().world().all_reduce(t, dist::ReduceOp::kMax);
  return t.item<double>();
}

struct Figures {
  int tp;
  double shard_mb, largest_mb;
  double save_mb;        // peak RSS above the start (before the model) while saving: the shard and the transient
  double save_extra_mb;  // the save's own transient: peak above the RSS just before it
  double load_mb;
};

TEST(CheckpointMemory, SavingAndLoadingHoldTheShardAndOneTensorNotTheModel) {
  SharedDir dir("memory");
  const ModelConfig config = wide_llama();
  std::vector<Figures> figures;
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    const std::string path = dir / fmt::format("tp{}", tp);
    Figures f{tp, 0, 0, 0, 0, 0};
    int64_t model_bytes = 0;
    ::malloc_trim(0);
    const int64_t base = sys::current_rss_bytes();
    {
      CausalLM model(config, grid.tp_group());
      init_random(model, 7);
      model.to(torch::kBFloat16);
      int64_t shard = 0, largest = 0;
      for (const WeightEntry& e : model.weights().entries()) {
        shard += e.param.numel() * 2;
        int64_t full = 2;
        for (int64_t s : e.full_shape) full *= s;
        largest = std::max(largest, full);
        model_bytes += full;
      }
      f.shard_mb = shard / kMb;
      f.largest_mb = largest / kMb;
      ::malloc_trim(0);
      ASSERT_TRUE(sys::reset_peak_rss()) << "/proc/self/clear_refs is not writable: VmHWM cannot be reset";
      const int64_t before_save = sys::current_rss_bytes();
      save_pretrained(model, path, grid.dp_rank() == 0);
      f.save_mb = worst_over_ranks((sys::peak_rss_bytes() - base) / kMb);
      f.save_extra_mb = worst_over_ranks((sys::peak_rss_bytes() - before_save) / kMb);
    }
    ASSERT_GE(model_bytes, 200LL << 20) << "a model of at least 200 MB";
    runtime().world().barrier();
    ::malloc_trim(0);
    const int64_t before_load = sys::current_rss_bytes();
    sys::reset_peak_rss();
    auto loaded = load_pretrained(path, grid.tp_group(), torch::kBFloat16);
    f.load_mb = worst_over_ranks((sys::peak_rss_bytes() - before_load) / kMb);
    for (const WeightEntry& e : loaded->weights().entries()) ASSERT_EQ(e.param.scalar_type(), torch::kBFloat16);
    figures.push_back(f);
    if (runtime().rank() == 0)
      std::printf("[ figures  ] TP %d of %d ranks, model %.1f MB bf16: shard %.1f MB, largest tensor %.1f MB; peak "
                  "RSS above the start: saving %.1f MB (%.1f MB above the model), loading %.1f MB (worst rank)\n",
                  tp, runtime().size(), model_bytes / kMb, f.shard_mb, f.largest_mb, f.save_mb, f.save_extra_mb,
                  f.load_mb);
    // Saving: beside the shard, one gathered tensor at a time.
    EXPECT_LE(f.save_extra_mb, f.largest_mb + kGatherSlackMb) << "TP " << tp;
    // ... a bound below the whole model, which a save that gathered every tensor before writing would hold.
    EXPECT_LT(f.largest_mb + kGatherSlackMb, model_bytes / kMb);
    // Loading: the bf16 shard; an fp32 copy of it would add twice as much again.
    EXPECT_LE(f.load_mb, f.shard_mb + kSlackMb) << "TP " << tp;
    EXPECT_GE(f.load_mb, f.shard_mb * 0.9) << "TP " << tp << ": the parameters themselves are resident";
  }
  // Falling with TP: loading by the shard at every step; saving (shard + one tensor) from the first TP to the last.
  for (size_t i = 1; i < figures.size(); ++i)
    EXPECT_LT(figures[i].load_mb, figures[i - 1].load_mb) << "loading under TP " << figures[i].tp;
  if (figures.size() > 1) {
    EXPECT_LT(figures.back().save_mb, figures.front().save_mb) << "saving under the widest TP";
  }
}

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// sys::keep_freed_memory(), as the Runtime left it: a step's tensors, freed, leave their pages for the next
// step's. Here 40 activations of about 2.8 MB (a [512, 1376]
// MLP activation) in three sizes, alive together and then freed. With glibc's defaults every round faults about
// 28,000 pages in again (110,292 over 4 rounds measured).
TEST(Memory, FreedTensorsKeepTheirPagesForTheNextStep) {
  if (sys::malloc_knobs_in_environment()) GTEST_SKIP() << "the environment sets malloc's knobs (GLIBC_TUNABLES, ...)";
  constexpr long kFaultsAllowed = 4096;  // 16 MB of 450 MB touched: the allocator's own (measured up to 691)
  auto step = [] {
    std::vector<torch::Tensor> activations;
    for (int64_t i = 0; i < 40; ++i) activations.push_back(torch::ones({512 * 1376 + i % 3 * 1000}));
    return activations.back().sum().item<float>();
  };
  for (int warm = 0; warm < 2; ++warm) step();
  const long before = minor_faults();
  for (int i = 0; i < 4; ++i) ASSERT_EQ(step(), 512.0f * 1376.0f);
  EXPECT_LT(minor_faults() - before, kFaultsAllowed);
}

}  // namespace
}  // namespace qforge::model
