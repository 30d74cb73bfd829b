// Which split of a node's cores into ranks x threads runs qforge's kind of work fastest here: `qforge env`
// measures it, since the answer depends on the machine (cores, caches, memory bandwidth, SMT) and on the BLAS.
#pragma once

#include <string>
#include <vector>

namespace qforge::sys {

struct LayoutThroughput {
  int workers = 1;  // concurrent workers, standing for ranks on one node
  int threads = 1;  // intra-op threads of each
  double items_per_s = 0;  // the workers' throughput together
};

// Every split workers x threads == cores (divisors of `cores`, most threads first): each worker is a thread of
// this process with its own OpenMP thread count, all running a decoder layer's work (a [256, 512] x [512, 1536]
// MLP with SiLU and a [256, 256] softmax per item) together for `seconds` after a warm-up. Restores the
// calling thread's thread count.
std::vector<LayoutThroughput> measure_layouts(int cores, double seconds = 0.4);

// "1x2 41.0/s, 2x1 57.3/s; fastest here: 2 ranks x 1 thread" (ranks x threads per rank).
std::string describe_layouts(const std::vector<LayoutThroughput>& layouts);

}  // namespace qforge::sys
