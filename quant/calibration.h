// Calibration data for post-training quantization: fixed-length token sequences from a text file or from a qforge
// corpus (generate's HDF5: data-free calibration), and the sums X^T X of a linear's inputs that GPTQ needs,
// accumulated over calibration sequences and reduced over the DP group.
#pragma once

#include "framework/dist/communicator.h"

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace qforge::io {
class CorpusReader;
}

namespace qforge::quant {

// Python's `random` module (MT19937 seeded by init_by_array, randint by rejection on getrandbits), so that windows
// are drawn exactly as GPTQ's and RPTQ's data loaders draw them (`random.seed(seed)`, then
// `random.randint(0, len - seqlen - 1)` per sample).
class PythonRandom {
 public:
  explicit PythonRandom(uint32_t seed);
  uint32_t next32();                      // genrand_uint32
  int64_t randint(int64_t low, int64_t high);  // low..high inclusive; high - low < 2^32

 private:
  uint32_t state_[624];
  int index_ = 624;
};

// `count` windows of `seq_len` tokens [count, seq_len] (int64) from one token stream: seeded random starts as the
// reference draws them (`random`), or consecutive non-overlapping windows from the start. Throws UsageError naming
// `source` when the stream is too short.
torch::Tensor text_windows(const torch::Tensor& tokens, int64_t count, int64_t seq_len, bool random, uint32_t seed,
                           const std::string& source);

// `count` corpus samples of at least `seq_len` tokens, cut to `seq_len` [count, seq_len] (int64): a seeded
// choice of distinct samples (`random`, Python's random.sample order) or the first ones. Throws UsageError naming
// the file when it holds fewer such samples.
torch::Tensor corpus_windows(const io::CorpusReader& corpus, int64_t count, int64_t seq_len, bool random,
                             uint32_t seed);

// Rows r, r + size, r + 2 size ... of `sequences`: one DP rank's share.
torch::Tensor dp_share(const torch::Tensor& sequences, const dist::Communicator& dp);

// Sum of X^T X over a linear layer's inputs, and how many sequences they came from: the Hessian of GPTQ is
// H = 2 / sequences * sum (the reference's running average, written as one sum so that DP ranks can add theirs).
// Under tensor parallelism each rank accumulates the block of rows of the sum that belongs to its own slice of
// the input features (`rows` of them): all_gather over TP gives the whole sum, and no rank computes it all.
class HessianAccumulator {
 public:
  HessianAccumulator(int64_t rows, int64_t columns, torch::ScalarType dtype, torch::Device device = torch::kCPU);
  // `block` [..., rows] are this rank's features of the input, `full` [..., columns] all of them (the same tensor
  // when there is no split); `sequences` is how many sequences the batch holds.
  void add(const torch::Tensor& block, const torch::Tensor& full, int64_t sequences);
  // Sums over the DP group (collective).
  void reduce(dist::Communicator& dp);
  // The full sum [columns, columns], gathered over `tp` (collective; tp of one rank: this rank's sum).
  torch::Tensor gathered_sum(dist::Communicator& tp) const;
  int64_t sequences() const { return sequences_; }
  const torch::Tensor& sum() const { return sum_; }

 private:
  torch::Tensor sum_;  // [rows, columns]
  int64_t sequences_ = 0;
};

}  // namespace qforge::quant
