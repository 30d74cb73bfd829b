// Generation throughput: the reference's way (one sequence at a time, KV cache) against qforge's batched
// decoding in groups, on the same random LLaMA model and the same samples, in one run.
//   bench_generate [--samples N] [--seq-len L] [--batch B] [--hidden H] [--layers K] [--vocab V] [--threads T]
#include "bench/bench_support.h"
#include "distill/corpus_generator.h"
#include "framework/dist/runtime.h"
#include "framework/system/system_info.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

namespace {

double tokens_per_second(qforge::model::CausalLM& model, qforge::distill::CorpusSettings settings, int64_t batch,
                         int64_t& tokens) {
  settings.batch_size = batch;
  qforge::distill::CorpusSchedule schedule(settings, model.config().vocab_size);
  std::vector<int64_t> groups(schedule.num_groups());
  std::iota(groups.begin(), groups.end(), 0);
  tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  qforge::distill::generate_groups(model, schedule, groups, [&](const qforge::io::CorpusSample& s) {
    tokens += static_cast<int64_t>(s.tokens.size());
  });
  return static_cast<double>(tokens) / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  qforge::dist::Runtime runtime(&argc, &argv);
  const int threads = qforge::sys::configure_threads(
      static_cast<int>(qforge::bench::option(argc, argv, "--threads", 0)), runtime.local_size());
  const qforge::model::ModelConfig config = qforge::bench::llama_from_options(argc, argv, 512, 8, 8192);
  qforge::distill::CorpusSettings settings;
  settings.seq_len = qforge::bench::option(argc, argv, "--seq-len", 128);
  settings.stop_at_eos = false;  // every sample full length: both ways generate exactly the same tokens
  const int64_t samples = qforge::bench::option(argc, argv, "--samples", 32),
                batch = qforge::bench::option(argc, argv, "--batch", 32);
  settings.num_samples = samples;

  qforge::model::CausalLM model(config, runtime.self());
  qforge::model::init_random(model, 1);
  int64_t tokens_one = 0, tokens_batched = 0;
  const double one = tokens_per_second(model, settings, 1, tokens_one);
  const double batched = tokens_per_second(model, settings, batch, tokens_batched);
  std::printf("model: hidden %lld, %lld layers, vocab %lld; %lld samples x %lld tokens; %d threads\n",
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_layers),
              static_cast<long long>(config.vocab_size), static_cast<long long>(samples),
              static_cast<long long>(settings.seq_len), threads);
  std::printf("one sequence at a time (reference): %10.1f tokens/s (%lld tokens)\n", one,
              static_cast<long long>(tokens_one));
  std::printf("batched, groups of %3lld:          %10.1f tokens/s (%lld tokens)\n", static_cast<long long>(batch),
              batched, static_cast<long long>(tokens_batched));
  std::printf("ratio batched / one at a time: %.1fx\n", batched / one);
  return 0;
}
