// What the process runs on: BLAS, threads, libtorch, CUDA/NCCL, and the job layout, as `qforge env` shows it.
#pragma once

#include <string>

namespace qforge {
namespace dist {
class Runtime;
class Grid;
}  // namespace dist

namespace sys {

struct BlasInfo {
  std::string library;      // file that provides sgemm_, as the dynamic linker resolved it
  std::string description;  // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64", ...
  bool is_reference = false;  // netlib's reference BLAS: 20-40x slower than an optimised one
};
BlasInfo detect_blas();

// Warns (on rank 0) when the BLAS libtorch calls is the slow reference implementation.
void warn_if_reference_blas();

// Sets libtorch's and OpenBLAS's thread counts: `threads`, or when 0 OMP_NUM_THREADS where the launcher sets it,
// else the node's cores divided among the `local_ranks` processes of this node. Returns the count set.
int configure_threads(int threads, int local_ranks);

// fp32 matmul throughput of an n x n x n product on this rank, in GFLOP/s (best of a few repetitions).
double measure_matmul_gflops(int n);

std::string torch_version();  // "1.13.0"
std::string cuda_summary();   // "not available (libtorch built without CUDA)", "2 devices: NVIDIA H100 ..."

// The `qforge env` report: version, ranks and nodes, the TP x DP layout with every rank's place in it,
// libtorch, BLAS, threads, CUDA and NCCL. Collective over the world; rank 0 gets the text, other ranks "".
std::string describe_environment(dist::Runtime& runtime, dist::Grid& grid);

}  // namespace sys
}  // namespace qforge
