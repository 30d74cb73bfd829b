// qforge's side of bench/compare: the same tasks and options as bench/reference/llama_eager.py, timed inside
// one process (loading excluded), one JSON line on stdout from rank 0:
//   bench_compare ppl      --model DIR --tokens FILE --seq-len L --threads T [--repeats R] [--batch-size B]
//   bench_compare generate --model DIR --samples N --length L --threads T [--repeats R] [--seed S] [--tp P]
//   bench_compare qat-step --model DIR --quant W-A-KV --batch B --seq-len L --threads T --steps S [--tp P]
//                          [--profile N]  (rank 0's N largest operators by self time over the timed steps, stderr)
//   bench_compare tokenize --model DIR --text FILE --out FILE.bin
//   bench_compare gemm --threads T   (fp32 matmul GFLOP/s per rank, every rank at once: the floor's rate)
// Under mpiexec the ranks split the work as data parallelism (ppl windows, generation groups, the QAT batch).
// generate and qat-step report the bytes each rank sends (Communicator::traffic) beside the layout's formula.
#include "bench/bench_support.h"
#include "bench/op_profile.h"
#include "distill/corpus_generator.h"
#include "distill/distillation.h"
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/eval/perplexity.h"
#include "framework/io/corpus.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/system/memory.h"
#include "framework/system/system_info.h"
#include "framework/tokenizer/tokenizer.h"
#include "framework/train/trainer.h"
#include "quant/qat.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

namespace {
namespace fs = std::filesystem;
using namespace qforge;
using bench::option;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string text_option(int argc, char** argv, const char* name) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  throw UsageError(fmt::format("bench_compare: {} is required", name));
}

int64_t minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// The largest value over the world (times: the slowest rank; peak RSS: the largest).
double world_max(dist::Runtime& runtime, double value) {
  torch::Tensor t = torch::tensor({value}, torch::kDouble);
  runtime.world().all_reduce(t, dist::ReduceOp::kMax);
  return t.item<double>();
}

void finish(dist::Runtime& runtime, nlohmann::json record) {
  record["impl"] = "qforge";
  record["ranks"] = runtime.size();
  record["peak_rss_mb"] = world_max(runtime, static_cast<double>(sys::peak_rss_bytes()) / 1e6);
  record["blas"] = sys::detect_blas().library;
  if (runtime.rank() == 0) std::printf("%s\n", record.dump().c_str());
}

torch::Tensor read_tokens(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(fmt::format("cannot read token file '{}'", path));
  const auto bytes = static_cast<int64_t>(in.tellg());
  std::vector<int32_t> ids(static_cast<size_t>(bytes / 4));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
  return torch::from_blob(ids.data(), {static_cast<int64_t>(ids.size())}, torch::kInt).to(torch::kLong);
}

void run_ppl(dist::Runtime& runtime, int argc, char** argv) {
  auto model = model::load_pretrained(text_option(argc, argv, "--model"), runtime.self());
  const torch::Tensor tokens = read_tokens(text_option(argc, argv, "--tokens"));
  const int64_t seq_len = option(argc, argv, "--seq-len", 256), batch = option(argc, argv, "--batch-size", 4);
  const int64_t repeats = option(argc, argv, "--repeats", 3);
  torch::NoGradGuard no_grad;
  eval::perplexity(*model, tokens.narrow(0, 0, std::min(tokens.numel(), seq_len * batch)), seq_len, batch,
                   runtime.world());  // warm-up
  std::vector<double> seconds;
  eval::PerplexityResult result;
  for (int64_t r = 0; r < repeats; ++r) {
    runtime.world().barrier();
    const double start = now_s();
    result = eval::perplexity(*model, tokens, seq_len, batch, runtime.world());
    seconds.push_back(world_max(runtime, now_s() - start));
  }
  finish(runtime, {{"task", "ppl"},
                   {"nll", result.mean_nll},
                   {"tokens", result.tokens},
                   {"windows", result.windows},
                   {"batch_size", batch},
                   {"seconds", seconds}});
}

// Bytes a rank sends decoding one group of `rows` samples of `length` tokens (the start token, then length - 1
// forward passes over [rows, 1], every row to the end: no stop at EOS) under TP p (ring counting), hidden H, L
// layers: per pass, all-reduces (2 (p - 1) / p of their bytes) of the embedding's and the two row-parallel outputs
// per layer [rows, H] fp32; all-gathers ((p - 1) x the input's bytes) of the greedy choice (the value fp32 and the
// index int64 per row) and of the logits' vocabulary shards [rows, ceil(V / p)] fp32 for sampling. Data parallel
// groups send nothing.
double generation_formula(int tp, const model::ModelConfig& m, int64_t rows, int64_t length) {
  if (tp == 1) return 0;
  const double p = tp, b = static_cast<double>(rows), hidden = static_cast<double>(m.hidden_size);
  const double local_vocab = static_cast<double>((m.vocab_size + tp - 1) / tp);
  const double all_reduces = 2 * (p - 1) / p * 4 * b * hidden * (1 + 2 * static_cast<double>(m.num_layers));
  const double all_gathers = (p - 1) * (b * (4 + 8) + 4 * b * local_vocab);
  return static_cast<double>(length - 1) * (all_reduces + all_gathers);
}

// LLM-QAT's generation (random start token, 3 greedy tokens, then top-K 50 sampling, no stop at EOS), all
// samples of a DP rank decoded as one group: the rank's share of N samples in one batch. The bytes are those of
// the TP group (DP groups decode independently), beside generation_formula over this rank's groups.
void run_generate(dist::Runtime& runtime, int argc, char** argv) {
  dist::Grid grid(runtime, static_cast<int>(option(argc, argv, "--tp", 1)));
  auto model = model::load_pretrained(text_option(argc, argv, "--model"), grid.tp_group());
  const int64_t samples = option(argc, argv, "--samples", 64), length = option(argc, argv, "--length", 128);
  const int64_t repeats = option(argc, argv, "--repeats", 1);
  const int dp = grid.dp();
  distill::CorpusSettings settings;
  settings.num_samples = samples;
  settings.seq_len = length;
  settings.start_tokens = "random";
  settings.greedy_prefix = {3};
  settings.stop_at_eos = false;
  settings.seed = option(argc, argv, "--seed", 0);
  settings.batch_size = (samples + dp - 1) / dp;
  const distill::CorpusSchedule schedule(settings, model->config().vocab_size);
  std::vector<int64_t> mine;
  double formula = 0;
  for (int64_t g = grid.dp_rank(); g < schedule.num_groups(); g += dp) {
    mine.push_back(g);
    formula += generation_formula(grid.tp(), model->config(), static_cast<int64_t>(schedule.group(g).size()), length);
  }
  std::vector<double> seconds;
  int64_t generated = 0;
  double sent = 0;
  auto count = [&](const io::CorpusSample& s) { generated += static_cast<int64_t>(s.tokens.size()) - 1; };
  for (int64_t r = 0; r < repeats; ++r) {
    runtime.world().barrier();
    grid.tp_group().reset_traffic();
    grid.dp_group().reset_traffic();
    generated = 0;
    const double start = now_s();
    distill::generate_groups(*model, schedule, mine, count);
    sent = grid.tp_group().traffic().bytes + grid.dp_group().traffic().bytes;
    seconds.push_back(world_max(runtime, now_s() - start));
  }
  torch::Tensor total = torch::tensor({grid.tp_rank() == 0 ? generated : int64_t{0}}, torch::kLong);
  runtime.world().all_reduce(total, dist::ReduceOp::kSum);
  finish(runtime, {{"task", "generate"},
                   {"tokens", total.item<int64_t>()},
                   {"samples", samples},
                   {"length", length},
                   {"seconds", seconds},
                   {"comm_bytes", sent},
                   {"comm_bytes_formula", formula},
                   {"dp", grid.dp()},
                   {"tp", grid.tp()}});
}

// Bytes a rank sends in one training step (ring counting, Communicator::Traffic), from the model and layout alone.
// Data parallelism (dp ranks): the reduce-scatter of every fp32 bucket and the all-gather of the updated masters,
// (dp - 1) / dp of the bucket bytes each, and two scalar all-reduces of 2 (dp - 1) / dp of their bytes: the stop
// flag (int32) and the loss (fp64), plus the gradient norm's (fp64) over the whole grid.
// Tensor parallelism (tp ranks), all-reduces of 2 (tp - 1) / tp of their bytes, per micro-step of N tokens
// (N' = N - B positions scored), hidden H, L layers, fp32 activations (4 bytes):
//   - activations [N, H]: the embedding and the two row-parallel outputs per layer (attention out, MLP down) in
//     each forward (the student's and the teacher's), and in the student's backward the input gradient of the
//     column-parallel linears, once per input they share (q, k, v; gate, up or OPT's fc1) and of the
//     vocabulary-parallel head: Megatron's minimum;
//   - the fake quantizers' statistics over the TP shards: per-token maxima [N] of the row-parallel inputs
//     (A < 16 bits) and of the per-token KV cache (KV < 16), 2 per layer each; per-channel weight maxima [H] of
//     the row-parallel weights (W < 16), 2 per layer; symmetric grids (one value; asymmetric: two);
//   - the KD loss's row maxima [2, N'] and sums [3, N'];
// and per step the stop flag and the gradient norm.
double step_formula(const std::vector<int64_t>& bucket_sizes, int dp, int tp, const model::ModelConfig& m,
                    const quant::BitWidths& bits, int64_t micro_batch, int64_t seq_len, int64_t micro_steps) {
  const double dp_share = static_cast<double>(dp - 1) / dp, tp_share = 2.0 * (tp - 1) / tp;
  double buckets = 0;
  for (int64_t size : bucket_sizes) buckets += 4.0 * static_cast<double>(size);
  const double data_parallel = dp_share * (2 * buckets) + 2 * dp_share * (4 + 8) + 2 * dp_share * 8;
  if (tp == 1) return data_parallel;
  const double tokens = static_cast<double>(micro_batch * seq_len), positions = micro_batch * (seq_len - 1.0);
  const double layers = static_cast<double>(m.num_layers), hidden = static_cast<double>(m.hidden_size);
  const double forwards = 1 + 2 * layers, backward = 2 * layers + 1;
  double micro = 4 * tokens * hidden * (2 * forwards + backward);
  if (bits.act < 16) micro += 2 * layers * 4 * tokens;
  if (bits.kv < 16) micro += 2 * layers * 4 * tokens;
  if (bits.weight < 16) micro += 2 * layers * 4 * hidden;
  micro += 4 * (2 + 3) * positions;
  return data_parallel + tp_share * (static_cast<double>(micro_steps) * micro + 4 + 8);
}

void run_qat_step(dist::Runtime& runtime, int argc, char** argv) {
  dist::Grid grid(runtime, static_cast<int>(option(argc, argv, "--tp", 1)));
  const std::string model_dir = text_option(argc, argv, "--model");
  auto teacher = model::load_pretrained(model_dir, grid.tp_group());
  auto student = model::load_pretrained(model_dir, grid.tp_group());
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  quant::QuantSettings quant;
  quant.bits = text_option(argc, argv, "--quant");
  quant::attach_quantizers(*student, quant);
  const int64_t batch = option(argc, argv, "--batch", 8), seq_len = option(argc, argv, "--seq-len", 128);
  const int64_t steps = option(argc, argv, "--steps", 3);

  torch::Tensor pid = torch::tensor({static_cast<int64_t>(::getpid())}, torch::kLong);
  runtime.world().broadcast(pid);  // one corpus, written by rank 0
  const fs::path shared_dir = fs::temp_directory_path() / fmt::format("qforge_bench_compare_{}", pid.item<int64_t>());
  if (runtime.rank() == 0) {
    fs::create_directories(shared_dir);
    bench::write_random_corpus(shared_dir.string(), batch * (steps + 2), seq_len, student->config().vocab_size);
  }
  runtime.world().barrier();
  io::CorpusReader corpus((shared_dir / "bench_corpus.h5").string());
  train::TrainSettings settings;
  settings.global_batch = batch;
  settings.micro_batch = batch / grid.dp();
  settings.lr = 2e-5;
  settings.schedule = "cosine";
  train::MicroStep step = distill::distillation_step(*student, teacher.get(), corpus, distill::DistillSettings{});
  // Step boundaries are the micro-steps' starts (one micro-step per step): step 0 is an untimed warm-up, steps
  // 1..S are timed, and faults and bytes are read at the start of step S + 1, so that they cover S whole steps
  // (each with the stop check that precedes its micro-step).
  settings.max_steps = steps + 2;
  std::vector<double> starts;
  int64_t faults_at_1 = 0, faults_at_end = 0;
  double sent = 0;
  const auto profile_rows = static_cast<size_t>(option(argc, argv, "--profile", 0));
  bench::OpProfile profile;
  auto timed = [&](const std::vector<int64_t>& samples, double tokens) {
    starts.push_back(now_s());
    if (starts.size() == 2) {
      faults_at_1 = minor_faults();
      grid.tp_group().reset_traffic();
      grid.dp_group().reset_traffic();
      if (profile_rows) profile.start();
    } else if (starts.size() == static_cast<size_t>(steps) + 2) {
      faults_at_end = minor_faults();
      sent = (grid.tp_group().traffic().bytes + grid.dp_group().traffic().bytes) / static_cast<double>(steps);
      if (profile_rows) profile.stop();
    }
    return step(samples, tokens);
  };
  train::Trainer trainer(settings, *student, grid.dp_group(), corpus, distill::distilled_tokens, "", "");
  QF_CHECK(trainer.total_steps() == steps + 2, "bench_compare: the corpus holds fewer steps than asked");
  trainer.run(timed);
  const double faults = static_cast<double>(faults_at_end - faults_at_1) / static_cast<double>(steps);
  if (profile_rows && runtime.rank() == 0) profile.print(stderr, starts[steps + 1] - starts[1], profile_rows);
  std::vector<double> seconds;
  for (int64_t i = 1; i <= steps; ++i) seconds.push_back(world_max(runtime, starts[i + 1] - starts[i]));
  const double formula = step_formula(trainer.bucket_sizes(), grid.dp(), grid.tp(), student->config(),
                                      quant::parse_bits(quant.bits), settings.micro_batch, seq_len, 1);
  if (runtime.rank() == 0) fs::remove_all(shared_dir);
  finish(runtime, {{"task", "qat-step"},
                   {"quant", quant.bits},
                   {"batch", batch},
                   {"seq_len", seq_len},
                   {"seconds", seconds},
                   {"minflt_per_step", faults},
                   {"comm_bytes", sent},
                   {"comm_bytes_formula", formula},
                   {"dp", grid.dp()},
                   {"tp", grid.tp()}});
}

// The fastest fp32 matmul rate on a rank, over square sizes, all ranks multiplying at once: the rate at which a
// layout's matrix products could run at best (bench/compare's GEMM floor); the largest over ranks.
void run_gemm(dist::Runtime& runtime) {
  double best = 0;
  for (int n : {512, 1024, 2048}) best = std::max(best, sys::measure_matmul_gflops(n));
  finish(runtime, {{"task", "gemm"}, {"gflops", world_max(runtime, best)}});
}

void run_tokenize(int argc, char** argv) {
  const std::string model_dir = text_option(argc, argv, "--model");
  auto tokenizer = tok::load_tokenizer(model_dir);
  const torch::Tensor ids = eval::tokenize_text_file(text_option(argc, argv, "--text"), *tokenizer).to(torch::kInt);
  std::ofstream out(text_option(argc, argv, "--out"), std::ios::binary);
  out.write(reinterpret_cast<const char*>(ids.data_ptr<int32_t>()), static_cast<std::streamsize>(ids.numel() * 4));
  std::printf("%s\n", nlohmann::json{{"task", "tokenize"}, {"tokens", ids.numel()}}.dump().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  dist::Runtime runtime(&argc, &argv);
  log::Options quiet;
  quiet.level = log::Level::kWarn;
  log::configure(quiet);
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_compare ppl|generate|qat-step|tokenize|gemm [options] (see bench/README.md)\n");
    return 2;
  }
  const std::string task = argv[1];
  sys::configure_threads(static_cast<int>(option(argc, argv, "--threads", 0)), runtime.local_size());
  try {
    if (task == "ppl")
      run_ppl(runtime, argc, argv);
    else if (task == "generate")
      run_generate(runtime, argc, argv);
    else if (task == "qat-step")
      run_qat_step(runtime, argc, argv);
    else if (task == "tokenize")
      run_tokenize(argc, argv);
    else if (task == "gemm")
      run_gemm(runtime);
    else
      throw UsageError(fmt::format("bench_compare: unknown task '{}'", task));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_compare: %s\n", e.what());
    return 1;
  }
  return 0;
}
