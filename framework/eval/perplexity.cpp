#include "framework/eval/perplexity.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/model/parallel.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <iterator>
#include <random>

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
  check_input_file(path, "a text file (eval.text)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the text file", path));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw Error(fmt::format("{}: holds no text", path));
  return torch::tensor(tokenizer.encode(text, /*bos=*/true, /*eos=*/false), torch::kLong);
}

torch::Tensor wikitext2_tokens(const std::string& path, const tok::Tokenizer& tokenizer) {
  check_input_file(path, "the WikiText-2 test file (wiki.test.raw)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the WikiText-2 test file (wiki.test.raw)", path));
  std::string joined, line;
  bool first = true;
  while (std::getline(in, line)) {
    if (!first) joined += "\n\n";
    first = false;
    if (line.find_first_not_of(" \t\r") != std::string::npos) joined += line + "\n";
  }
  if (joined.find_first_not_of(" \t\r\n") == std::string::npos) throw Error(fmt::format("{}: holds no text", path));
  return torch::tensor(tokenizer.encode(joined, /*bos=*/true, /*eos=*/false), torch::kLong);
}

torch::Tensor c4_windows(const std::string& path, const tok::Tokenizer& tokenizer, int64_t seq_len, int64_t windows,
                         uint64_t seed) {
  check_input_file(path, "a C4 file (JSON Lines with a \"text\" field)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the C4 file (JSON Lines with a \"text\" field)", path));
  std::vector<std::string> documents;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
      throw Error(fmt::format("{}:{}: expected a JSON object with a \"text\" string", path, number));
    documents.push_back(row["text"].get<std::string>());
  }
  if (documents.empty()) throw Error(fmt::format("{}: holds no documents", path));
  std::mt19937_64 random(seed);
  std::vector<int64_t> tokens;
  std::vector<char> too_short(documents.size(), 0);
  std::size_t short_count = 0;
  while (static_cast<int64_t>(tokens.size()) < windows * seq_len) {
    if (short_count == documents.size())
      throw Error(fmt::format("{}: no document has the {} tokens a window needs", path, seq_len + 1));
    const std::size_t d = std::uniform_int_distribution<std::size_t>(0, documents.size() - 1)(random);
    if (too_short[d]) continue;
    const std::vector<int64_t> ids = tokenizer.encode(documents[d], /*bos=*/true, /*eos=*/false);
    const int64_t count = static_cast<int64_t>(ids.size());
    if (count <= seq_len) {
      too_short[d] = 1;
      ++short_count;
      continue;
    }
    const int64_t start = std::uniform_int_distribution<int64_t>(0, count - seq_len - 1)(random);
    tokens.insert(tokens.end(), ids.begin() + start, ids.begin() + start + seq_len);
  }
  return torch::tensor(tokens, torch::kLong);
}

}  // namespace qforge::eval
