#include "framework/system/layout_probe.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace qforge::sys {
namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One item: the shape of a small decoder layer's MLP and one head of attention scores.
void work_item(const torch::Tensor& x, const torch::Tensor& up, const torch::Tensor& down) {
  torch::Tensor h = torch::silu(x.matmul(up)).matmul(down);
  torch::Tensor scores = torch::softmax(h.narrow(1, 0, 64).matmul(h.narrow(1, 0, 64).t()), -1);
  (void)scores.sum().item<float>();
}

LayoutThroughput measure(int workers, int threads, double seconds) {
  std::atomic<int64_t> items{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w)
    pool.emplace_back([&, w] {
      torch::NoGradGuard no_grad;
      at::set_num_threads(threads);  // this thread's OpenMP team size (and OpenBLAS's, in its OpenMP build)
      auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(w + 1));
      const torch::Tensor x = torch::randn({256, 512}, generator), up = torch::randn({512, 1536}, generator) * 0.05,
                          down = torch::randn({1536, 512}, generator) * 0.05;
      work_item(x, up, down);  // warm-up: first-touch and BLAS buffers
      ++ready;
      while (!go) std::this_thread::yield();
      while (!stop) {
        work_item(x, up, down);
        ++items;
      }
    });
  while (ready < workers) std::this_thread::yield();
  const double start = now_s();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const int64_t counted = items.load();
  const double elapsed = now_s() - start;
  stop = true;
  for (std::thread& t : pool) t.join();
  return {workers, threads, static_cast<double>(counted) / elapsed};
}

}  // namespace

std::vector<LayoutThroughput> measure_layouts(int cores, double seconds) {
  const int saved = at::get_num_threads();
  std::vector<LayoutThroughput> layouts;
  for (int workers = 1; workers <= cores; ++workers)
    if (cores % workers == 0) layouts.push_back(measure(workers, cores / workers, seconds));
  at::set_num_threads(saved);
  return layouts;
}

std::string describe_layouts(const std::vector<LayoutThroughput>& layouts) {
  std::string text;
  const LayoutThroughput* best = nullptr;
  for (const LayoutThroughput& l : layouts) {
    text += fmt::format("{}{}x{} {:.1f}/s", text.empty() ? "" : ", ", l.workers, l.threads, l.items_per_s);
    if (!best || l.items_per_s > best->items_per_s) best = &l;
  }
  if (best)
    text += fmt::format("; fastest here: {} rank(s) x {} thread(s) per node", best->workers, best->threads);
  return text;
}

}  // namespace qforge::sys
