#include "framework/eval/perplexity.h"

#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/model/parallel.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <iterator>

namespace qforge::eval {

PerplexityResult perplexity(model::CausalLM& model, const torch::Tensor& tokens, int64_t seq_len, int64_t batch_size,
                            dist::Communicator& dp) {
  torch::NoGradGuard no_grad;
  if (seq_len < 2 || seq_len > model.config().max_positions)
    throw UsageError(fmt::format("eval.seq_len = {} must be in [2, {}] (the model's context)", seq_len,
                                 model.config().max_positions));
  const int64_t windows = tokens.numel() / seq_len;
  QF_CHECK(windows > 0, fmt::format("the text has {} tokens, fewer than one window of {}", tokens.numel(), seq_len));
  std::vector<int64_t> mine;
  for (int64_t w = dp.rank(); w < windows; w += dp.size()) mine.push_back(w);

  torch::Tensor nll_sum = torch::zeros({1}, torch::kDouble);
  log::Progress progress("perplexity", static_cast<int64_t>(mine.size()), "windows (rank 0)");
  for (std::size_t first = 0; first < mine.size(); first += batch_size) {
    const int64_t count = std::min<int64_t>(batch_size, mine.size() - first);
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < count; ++i) rows.push_back(tokens.narrow(0, mine[first + i] * seq_len, seq_len));
    torch::Tensor batch = torch::stack(rows);
    torch::Tensor logits = model.forward(batch.narrow(1, 0, seq_len - 1));
    torch::Tensor targets = batch.narrow(1, 1, seq_len - 1).reshape({-1});
    torch::Tensor nll = model::vocab_parallel_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets, model.tp(),
                                                            model.vocab_start());
    nll_sum += nll.to(torch::kDouble).sum().cpu();
    progress.advance(count);
  }
  dp.all_reduce(nll_sum, dist::ReduceOp::kSum);
  PerplexityResult result;
  result.windows = windows;
  result.tokens = windows * (seq_len - 1);
  result.mean_nll = nll_sum.item<double>() / static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.mean_nll);
  return result;
}

torch::Tensor tokenize_text_file(const std::string& path, const tok::Tokenizer& tokenizer) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the text file", path));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw Error(fmt::format("{}: holds no text", path));
  return torch::tensor(tokenizer.encode(text, /*bos=*/true, /*eos=*/false), torch::kLong);
}

}  // namespace qforge::eval
