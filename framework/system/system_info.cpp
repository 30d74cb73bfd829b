#include "framework/system/system_info.h"

#include "framework/dist/communicator.h"
#include "framework/dist/runtime.h"
#include "framework/log/log.h"
#include "framework/system/layout_probe.h"
#include "framework/system/version.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <mpi.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>

namespace qforge::sys {
namespace {

template <typename Fn>
Fn find_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

std::string real_path(const char* path) {
  char resolved[PATH_MAX];
  return realpath(path, resolved) ? std::string(resolved) : std::string(path);
}

std::string describe_blas_library(const std::string& path, bool& is_reference) {
  is_reference = false;
  if (path.find("openblas") != std::string::npos) {
    auto config = find_symbol<const char* (*)()>("openblas_get_config");  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
    return config ? std::string(config()) : "OpenBLAS";
  }
  if (path.find("mkl") != std::string::npos) return "Intel MKL";
  if (path.find("blis") != std::string::npos) return "BLIS";
  if (path.find("atlas") != std::string::npos) return "ATLAS";
  if (path.find("/blas/libblas") != std::string::npos || path.find("libblas.so") != std::string::npos) {
    is_reference = true;
    return "reference BLAS (netlib)";
  }
  return "unknown BLAS";
}

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, length);
  if (std::size_t newline = version.find_first_of(",\n"); newline != std::string::npos) version.resize(newline);
  return version;
}

std::string group_lists(int world, int tp, bool tp_groups) {
  std::vector<std::string> groups;
  const int count = tp_groups ? world / tp : tp;
  for (int g = 0; g < std::min(count, 16); ++g) {
    std::vector<int> ranks;
    if (tp_groups) for (int i = 0; i < tp; ++i) ranks.push_back(g * tp + i);
    else for (int r = g; r < world; r += tp) ranks.push_back(r);
    groups.push_back(fmt::format("{{{}}}", fmt::join(ranks, ",")));
  }
  if (count > 16) groups.push_back(fmt::format("... ({} groups)", count));
  return fmt::format("{}", fmt::join(groups, " "));
}

constexpr int kHostNameBytes = 64;
constexpr int kMaxListedRanks = 64;

}  // namespace

BlasInfo detect_blas() {
  BlasInfo info;
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info where{};
  if (!sgemm || !dladdr(sgemm, &where) || !where.dli_fname) {
    info.library = "(none loaded)";
    info.description = "no BLAS found (sgemm_ unresolved)";
    return info;
  }
  info.library = real_path(where.dli_fname);
  info.description = describe_blas_library(info.library, info.is_reference);
  return info;
}

void warn_if_reference_blas() {
  BlasInfo blas = detect_blas();
  if (blas.is_reference)
    log::warn("libtorch calls the slow reference BLAS ({}); install OpenBLAS (launch/install-deps.sh does) "
              "for 20-40x faster matrix products", blas.library);
}

int configure_threads(int threads, int local_ranks) {
  if (threads <= 0) {
    // The launcher's choice first (Slurm sites set OMP_NUM_THREADS from --cpus-per-task), else an even share.
    const char* launcher = std::getenv("OMP_NUM_THREADS");
    const int from_launcher = launcher ? std::atoi(launcher) : 0;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads = from_launcher > 0 ? from_launcher : std::max(1, cores / std::max(1, local_ranks));
  }
  at::set_num_threads(threads);
  if (auto set_openblas = find_symbol<void (*)(int)>("openblas_set_num_threads")) set_openblas(threads);
  return threads;
}

double measure_matmul_gflops(int n) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n});
  torch::Tensor c = torch::matmul(a, b);  // warm-up
  double best = 1e30;
  for (int repeat = 0; repeat < 3; ++repeat) {
    auto start = std::chrono::steady_clock::now();
    c = torch::matmul(a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * n * n * static_cast<double>(n) / best / 1e9;
}

std::string torch_version() {
  return fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
}

std::string cuda_summary() {
  if (!torch::cuda::is_available()) return "not available (no CUDA device, or libtorch built without CUDA)";
  return fmt::format("{} device(s) visible", torch::cuda::device_count());
}

std::string describe_environment(dist::Runtime& runtime, dist::Grid& grid) {
  // Every rank reports its own place; rank 0 checks them against the layout it computed.
  torch::Tensor place = torch::tensor({static_cast<int64_t>(runtime.node_index()), int64_t(runtime.local_rank()),
                                       int64_t(grid.tp_rank()), int64_t(grid.dp_rank())});
  torch::Tensor places = runtime.world().all_gather(place.unsqueeze(0), 0);
  torch::Tensor host = torch::zeros({kHostNameBytes}, torch::kUInt8);
  std::memcpy(host.data_ptr(), runtime.host_name().data(), std::min<size_t>(runtime.host_name().size(), kHostNameBytes - 1));
  torch::Tensor hosts = runtime.world().all_gather(host.unsqueeze(0), 0);
  if (runtime.rank() != 0) return {};
  const BlasInfo blas = detect_blas();
  const double gflops = measure_matmul_gflops(512);

  const int world = runtime.size();
  auto host_of = [&](int rank) { return std::string(reinterpret_cast<const char*>(hosts[rank].data_ptr())); };
  auto row = [&](int rank, int column) { return places[rank][column].item<int64_t>(); };

  std::vector<std::string> per_node;
  for (int node = 0, rank = 0; node < runtime.node_count(); ++node) {
    while (row(rank, 0) != node) ++rank;
    per_node.push_back(fmt::format("{}={}", host_of(rank), runtime.ranks_per_node()[node]));
  }
  bool consistent = true;
  std::string table = "  rank  node  host                  local  tp_rank  dp_rank\n";
  for (int r = 0; r < world; ++r) {
    consistent = consistent && row(r, 2) == r % grid.tp() && row(r, 3) == r / grid.tp();
    if (r < kMaxListedRanks)
      table += fmt::format("  {:<5} {:<5} {:<21} {:<6} {:<8} {}\n", r, row(r, 0), host_of(r), row(r, 1), row(r, 2), row(r, 3));
  }
  if (world > kMaxListedRanks) table += fmt::format("  ... {} more ranks\n", world - kMaxListedRanks);

  std::string text;
  text += fmt::format("qforge {}\n", version());
  text += fmt::format("ranks      {} on {} node(s); ranks per node: {}\n", world, runtime.node_count(), fmt::join(per_node, " "));
  text += fmt::format("layout     {} (TP groups {} nodes)\n", grid.describe(),
                      grid.tp_groups_within_nodes() ? "within" : "SPAN");
  text += fmt::format("  TP groups  {}\n  DP groups  {}\n", group_lists(world, grid.tp(), true), group_lists(world, grid.tp(), false));
  text += table;
  text += fmt::format("  every rank reports this layout: {}\n", consistent ? "yes" : "NO");
  text += fmt::format("libtorch   {} ({})\n", torch_version(), torch::cuda::is_available() ? "CUDA" : "CPU");
  text += fmt::format("BLAS       {}\n           {}; 512^3 fp32 matmul {:.1f} GFLOP/s on rank 0\n", blas.description, blas.library, gflops);
  text += fmt::format("threads    {} intra-op per rank, {} local rank(s) on rank 0's node, {} hardware threads\n",
                      at::get_num_threads(), runtime.local_size(), std::thread::hardware_concurrency());
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  text += fmt::format("layouts    ranks x threads per node, a decoder layer's work items/s measured on rank 0 "
                      "(alone on the node for a fair figure):\n           {}\n",
                      describe_layouts(measure_layouts(cores)));
  text += fmt::format("MPI        {}\n", mpi_library_version());
  text += fmt::format("CUDA       {}\n", cuda_summary());
  text += fmt::format("NCCL       {}\n", dist::nccl_built() ? "built" : "not built (libtorch has no CUDA)");
  return text;
}

}  // namespace qforge::sys
