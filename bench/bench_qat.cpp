// QAT step cost: full distillation steps (teacher forward, student forward and backward, sharded KD loss, AdamW)
// on the same random LLaMA model with quantizers off and at several W-A-KV settings, in one run. Prints the step
// time, tokens/s, the ratio to full precision and the share of the step spent in matrix products (aten::mm,
// addmm, bmm, baddbmm timed by bench/op_profile.h during separate, observed steps).
//   bench_qat [--hidden H] [--layers K] [--vocab V] [--seq-len L] [--batch B] [--steps N] [--rounds R] [--threads T]
#include "distill/distillation.h"
#include "bench/bench_support.h"
#include "bench/op_profile.h"
#include "framework/dist/runtime.h"
#include "framework/io/corpus.h"
#include "framework/log/log.h"
#include "framework/system/system_info.h"
#include "framework/train/trainer.h"
#include "quant/qat.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <unistd.h>

namespace {
namespace fs = std::filesystem;
using namespace qforge;


double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Measurement {
  double step_s, tokens_per_s, matmul_share;
};

// `steps` timed distillation steps (after one untimed), then two observed ones for the matmul share.
Measurement measure(model::CausalLM& student, model::CausalLM& teacher, const io::CorpusReader& corpus,
                    const train::TrainSettings& base, int64_t steps) {
  distill::DistillSettings distill_settings;
  train::MicroStep step = distill::distillation_step(student, &teacher, corpus, distill_settings);
  auto run = [&](int64_t count) {
    train::TrainSettings s = base;
    s.max_steps = count;
    train::Trainer trainer(s, student, student.tp(), corpus, distill::distilled_tokens, "", "");
    const double start = now_s();
    trainer.run(step);
    return now_s() - start;
  };
  run(1);
  const double seconds = run(steps);
  const double tokens = static_cast<double>(steps * base.global_batch * (corpus.seq_len() - 1));
  bench::OpProfile profile;
  profile.start();
  const double observed = run(2);
  profile.stop();
  const double matmul_s = profile.seconds_in({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"});
  return {seconds / steps, tokens / seconds, matmul_s / observed};
}

}  // namespace

int main(int argc, char** argv) {
  dist::Runtime runtime(&argc, &argv);
  log::Options quiet;
  quiet.level = log::Level::kWarn;  // no training progress lines between the figures
  log::configure(quiet);
  const int threads = sys::configure_threads(static_cast<int>(qforge::bench::option(argc, argv, "--threads", 0)), runtime.local_size());
  const qforge::model::ModelConfig config = qforge::bench::llama_from_options(argc, argv, 256, 4, 4096);
  const int64_t seq_len = qforge::bench::option(argc, argv, "--seq-len", 128), batch = qforge::bench::option(argc, argv, "--batch", 4);
  const int64_t steps = qforge::bench::option(argc, argv, "--steps", 5);

  const fs::path dir = fs::temp_directory_path() / fmt::format("qforge_bench_qat_{}", ::getpid());
  fs::create_directories(dir);
  io::CorpusReader corpus(
      qforge::bench::write_random_corpus(dir.string(), batch * (steps + 3), seq_len, config.vocab_size));
  train::TrainSettings settings;
  settings.global_batch = batch;
  settings.micro_batch = batch;
  settings.lr = 1e-5;

  model::CausalLM teacher(config, runtime.self()), student(config, runtime.self());
  model::init_random(teacher, 1);
  for (auto& p : teacher.parameters()) p.requires_grad_(false);
  std::printf("model: hidden %lld, %lld layers, vocab %lld; %lld samples x %lld tokens per step; %d threads\n",
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_layers),
              static_cast<long long>(config.vocab_size), static_cast<long long>(batch), static_cast<long long>(seq_len),
              threads);
  // Rounds over all settings, the best of each kept: a shared machine's noise only ever adds time.
  const std::vector<std::string> settings_bits = {"16-16-16", "4-8-4", "4-8-8", "8-8-4", "4-16-16"};
  const int64_t rounds = qforge::bench::option(argc, argv, "--rounds", 3);
  std::vector<Measurement> best(settings_bits.size(), Measurement{1e30, 0, 0});
  for (int64_t round = 0; round < rounds; ++round)
    for (size_t i = 0; i < settings_bits.size(); ++i) {
      model::init_random(student, 1);
      quant::QuantSettings q;
      q.bits = settings_bits[i];
      quant::attach_quantizers(student, q);
      const Measurement m = measure(student, teacher, corpus, settings, steps);
      if (m.step_s < best[i].step_s) best[i] = m;
    }
  std::printf("best of %lld rounds of %lld steps each\n", static_cast<long long>(rounds), static_cast<long long>(steps));
  std::printf("%-34s %10s %12s %10s %14s\n", "quantizers (W-A-KV)", "step ms", "tokens/s", "vs off", "in matmul");
  for (size_t i = 0; i < settings_bits.size(); ++i)
    std::printf("%-34s %10.1f %12.0f %9.2fx %13.1f%%\n", i == 0 ? "off (full precision)" : settings_bits[i].c_str(),
                best[i].step_s * 1e3, best[i].tokens_per_s, best[i].step_s / best[0].step_s, 100 * best[i].matmul_share);
  fs::remove_all(dir);
  return 0;
}
