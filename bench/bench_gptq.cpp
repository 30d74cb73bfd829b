// GPTQ speed against the reference: qforge's gptq_quantize and bench/gptq_reference.py (IST-DASLab/gptq's
// fasterquant transcribed, on the same libtorch under /usr/bin/python3) quantize the same random weight with the
// same Hessian on the same thread count. Prints both times (best of R rounds), their ratio and the fraction of
// equal codes, for W4 group-128 symmetric without and with act-order.
//   bench_gptq [--rows R --cols C] [--threads T] [--rounds N] [--sequences S --seq-len L]
// Default shapes: 4096 x 4096 and 11008 x 4096 (rows x cols, LLaMA-7B's q_proj and up_proj).
#include "bench/bench_support.h"
#include "framework/system/system_info.h"
#include "quant/gptq.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>
#include <unistd.h>

namespace {
namespace fs = std::filesystem;
using namespace qforge;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// H = 2/n sum X^T X over n sequences of calibration tokens whose features are correlated (a shared low-rank part)
// and whose scales span three orders of magnitude, with a few outlier channels: like an LLM layer's inputs.
torch::Tensor realistic_hessian(int64_t cols, int64_t sequences, int64_t seq_len) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const int64_t tokens = sequences * seq_len, rank = 64;
  torch::Tensor scale = torch::pow(10.0, torch::rand({cols}) * 3 - 1.5);
  scale.index_put_({torch::randint(cols, {cols / 256}, torch::kLong)}, 30.0f);
  const torch::Tensor X =
      (torch::randn({tokens, cols}) + torch::randn({tokens, rank}).mm(torch::randn({rank, cols})) * 0.5) * scale;
  return X.t().mm(X) * (2.0 / static_cast<double>(sequences));
}

void write_raw(const fs::path& path, const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat).contiguous();
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(c.data_ptr()), c.numel() * 4);
}

torch::Tensor read_codes(const fs::path& path, int64_t rows, int64_t cols) {
  torch::Tensor codes = torch::empty({rows, cols}, torch::kInt32);
  std::ifstream in(path, std::ios::binary);
  if (!in.read(static_cast<char*>(codes.data_ptr()), rows * cols * 4)) {
    std::fprintf(stderr, "bench_gptq: the reference wrote no codes to %s\n", path.c_str());
    std::exit(1);
  }
  return codes;
}

// Runs the Python reference on W.f32 / H.f32 in `dir`; returns its best time (seconds) and leaves codes.i32.
double run_reference(const fs::path& dir, int64_t rows, int64_t cols, const quant::GptqOptions& options,
                     int threads, int64_t rounds) {
  const std::string command = fmt::format(
      "OMP_NUM_THREADS={0} OPENBLAS_NUM_THREADS={0} /usr/bin/python3 '{1}' --dir '{2}' --rows {3} --cols {4} "
      "--bits {5} --groupsize {6} --blocksize {7} --percdamp {8} --threads {0} --rounds {9}{10}{11}{12}",
      threads, QFORGE_GPTQ_REFERENCE, dir.string(), rows, cols, options.bits, options.group_size,
      options.block_size, options.percdamp, rounds, options.symmetric ? "" : " --asym",
      options.act_order ? " --act-order" : "", options.static_groups ? " --static-groups" : "");
  FILE* pipe = ::popen(command.c_str(), "r");
  double seconds = -1;
  char line[256];
  while (pipe && std::fgets(line, sizeof line, pipe))
    if (std::sscanf(line, "seconds %lf", &seconds) != 1) std::fputs(line, stderr);
  if (!pipe || ::pclose(pipe) != 0 || seconds < 0) {
    std::fprintf(stderr, "bench_gptq: the reference failed: %s\n", command.c_str());
    std::exit(1);
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = sys::configure_threads(static_cast<int>(bench::option(argc, argv, "--threads", 2)), 1);
  const int64_t rounds = bench::option(argc, argv, "--rounds", 2);
  const int64_t sequences = bench::option(argc, argv, "--sequences", 16);
  const int64_t seq_len = bench::option(argc, argv, "--seq-len", 512);
  std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {11008, 4096}};
  if (bench::option(argc, argv, "--rows", 0) > 0 || bench::option(argc, argv, "--cols", 0) > 0)
    shapes = {{bench::option(argc, argv, "--rows", 4096), bench::option(argc, argv, "--cols", 4096)}};

  const fs::path dir = fs::temp_directory_path() / fmt::format("qforge_bench_gptq_{}", ::getpid());
  fs::create_directories(dir);
  std::printf("GPTQ, qforge vs the Python reference on the same libtorch: %d threads, best of %lld rounds; "
              "Hessian from %lld x %lld calibration tokens\n",
              threads, static_cast<long long>(rounds), static_cast<long long>(sequences),
              static_cast<long long>(seq_len));
  std::printf("%-14s %-22s %10s %10s %8s %12s\n", "rows x cols", "setting", "qforge s", "python s", "ratio",
              "codes equal");
  int64_t hessian_cols = -1;
  torch::Tensor H;
  for (const auto& [rows, cols] : shapes) {
    if (cols != hessian_cols) {
      H = realistic_hessian(cols, sequences, seq_len);
      hessian_cols = cols;
      write_raw(dir / "H.f32", H);
    }
    torch::manual_seed(1);
    const torch::Tensor W = torch::randn({rows, cols}) * 0.02;
    write_raw(dir / "W.f32", W);
    for (const bool act_order : {false, true}) {
      quant::GptqOptions options;
      options.group_size = 128;
      options.act_order = act_order;
      double best = 1e30;
      torch::Tensor codes;
      for (int64_t round = 0; round < rounds; ++round) {
        const double start = now_s();
        codes = quant::gptq_quantize(W, H, options).codes;
        best = std::min(best, now_s() - start);
      }
      const double python = run_reference(dir, rows, cols, options, threads, rounds);
      const torch::Tensor reference = read_codes(dir / "codes.i32", rows, cols);
      const double equal = (codes == reference).to(torch::kDouble).mean().item<double>();
      std::printf("%-14s %-22s %10.3f %10.3f %7.2fx %12.6f\n", fmt::format("{} x {}", rows, cols).c_str(),
                  act_order ? "W4 g128 sym act-order" : "W4 g128 sym", best, python, best / python, equal);
      std::fflush(stdout);
    }
  }
  fs::remove_all(dir);
  return 0;
}
