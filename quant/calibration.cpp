#include "quant/calibration.h"

#include "framework/common/error.h"
#include "framework/io/corpus.h"

#include <fmt/format.h>

#include <numeric>
#include <vector>

namespace qforge::quant {

// ---- PythonRandom: CPython's _randommodule.c -------------------------------------------------------------------

PythonRandom::PythonRandom(uint32_t seed) {
  // init_genrand(19650218), then init_by_array with the seed's 32-bit words (one word for seeds below 2^32).
  state_[0] = 19650218U;
  for (uint32_t i = 1; i < 624; ++i) state_[i] = 1812433253U * (state_[i - 1] ^ (state_[i - 1] >> 30)) + i;
  const uint32_t key[1] = {seed};
  const uint32_t key_length = 1;
  uint32_t i = 1, j = 0;
  for (uint32_t k = 624; k > 0; --k) {
    state_[i] = (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1664525U)) + key[j] + j;
    ++i;
    ++j;
    if (i >= 624) {
      state_[0] = state_[623];
      i = 1;
    }
    if (j >= key_length) j = 0;
  }
  for (uint32_t k = 623; k > 0; --k) {
    state_[i] = (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1566083941U)) - i;
    ++i;
    if (i >= 624) {
      state_[0] = state_[623];
      i = 1;
    }
  }
  state_[0] = 0x80000000U;
}

uint32_t PythonRandom::next32() {
  constexpr uint32_t kUpper = 0x80000000U, kLower = 0x7fffffffU, kMatrix = 0x9908b0dfU;
  if (index_ >= 624) {
    for (int k = 0; k < 624; ++k) {
      const uint32_t y = (state_[k] & kUpper) | (state_[(k + 1) % 624] & kLower);
      state_[k] = state_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1U) ? kMatrix : 0U);
    }
    index_ = 0;
  }
  uint32_t y = state_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= y >> 18;
  return y;
}

int64_t PythonRandom::randint(int64_t low, int64_t high) {
  const auto n = static_cast<uint64_t>(high - low + 1);
  QF_CHECK(high >= low && n <= (1ULL << 32), "PythonRandom::randint: the range must hold 1 to 2^32 values");
  int bits = 0;
  while ((n >> bits) != 0) ++bits;  // n.bit_length()
  uint64_t r;
  do {
    r = next32() >> (32 - bits);  // getrandbits(bits) for bits <= 32
  } while (r >= n);
  return low + static_cast<int64_t>(r);
}

// ---- sequences ---------------------------------------------------------------------------------------------

torch::Tensor text_windows(const torch::Tensor& tokens, int64_t count, int64_t seq_len, bool random, uint32_t seed,
                           const std::string& source) {
  const int64_t length = tokens.numel();
  const int64_t needed = random ? seq_len + 1 : count * seq_len;
  if (length < needed)
    throw UsageError(fmt::format("{}: {} tokens are too few for {} calibration sequences of {} tokens ({} needed{})",
                                 source, length, count, seq_len, needed,
                                 random ? "" : " for consecutive windows; ptq.calib_windows: random needs fewer"));
  torch::Tensor flat = tokens.reshape({-1}).to(torch::kLong);
  std::vector<torch::Tensor> rows;
  PythonRandom rng(seed);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t start = random ? rng.randint(0, length - seq_len - 1) : i * seq_len;
    rows.push_back(flat.narrow(0, start, seq_len));
  }
  return torch::stack(rows);
}

torch::Tensor corpus_windows(const io::CorpusReader& corpus, int64_t count, int64_t seq_len, bool random,
                             uint32_t seed) {
  std::vector<int64_t> long_enough;
  for (std::size_t i = 0; i < corpus.lengths().size(); ++i)
    if (corpus.lengths()[i] >= seq_len) long_enough.push_back(static_cast<int64_t>(i));
  if (static_cast<int64_t>(long_enough.size()) < count)
    throw UsageError(fmt::format("{}: {} of its {} samples hold {} tokens or more, fewer than the {} calibration "
                                 "sequences asked for (ptq.nsamples, ptq.seq_len)",
                                 corpus.path(), long_enough.size(), corpus.num_samples(), seq_len, count));
  if (random) {  // a partial Fisher-Yates shuffle: the first `count` are a seeded choice without repeats
    PythonRandom rng(seed);
    const auto n = static_cast<int64_t>(long_enough.size());
    for (int64_t i = 0; i < count; ++i) std::swap(long_enough[i], long_enough[rng.randint(i, n - 1)]);
  }
  long_enough.resize(count);
  return corpus.batch(long_enough).first.narrow(1, 0, seq_len).contiguous();
}

torch::Tensor dp_share(const torch::Tensor& sequences, const dist::Communicator& dp) {
  std::vector<int64_t> rows;
  for (int64_t i = dp.rank(); i < sequences.size(0); i += dp.size()) rows.push_back(i);
  return sequences.index_select(0, torch::tensor(rows, torch::kLong));
}

// ---- Hessian sums ------------------------------------------------------------------------------------------

HessianAccumulator::HessianAccumulator(int64_t rows, int64_t columns, torch::ScalarType dtype, torch::Device device)
    : sum_(torch::zeros({rows, columns}, torch::TensorOptions().dtype(dtype).device(device))) {}

void HessianAccumulator::add(const torch::Tensor& block, const torch::Tensor& full, int64_t sequences) {
  const auto dtype = sum_.scalar_type();
  torch::Tensor b = block.reshape({-1, block.size(-1)}).to(sum_.device(), dtype);
  torch::Tensor f = full.reshape({-1, full.size(-1)}).to(sum_.device(), dtype);
  sum_.addmm_(b.t(), f);
  sequences_ += sequences;
}

void HessianAccumulator::reduce(dist::Communicator& dp) {
  if (dp.size() == 1) return;
  dp.all_reduce(sum_, dist::ReduceOp::kSum);
  torch::Tensor count = torch::tensor({sequences_}, torch::TensorOptions(torch::kLong).device(sum_.device()));
  dp.all_reduce(count, dist::ReduceOp::kSum);
  sequences_ = count.item<int64_t>();
}

torch::Tensor HessianAccumulator::gathered_sum(dist::Communicator& tp) const {
  return tp.size() == 1 ? sum_ : tp.all_gather(sum_, 0);
}

}  // namespace qforge::quant
