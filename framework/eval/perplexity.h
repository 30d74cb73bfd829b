// Perplexity of a token stream: non-overlapping windows of seq_len tokens (a trailing partial window is
// dropped, as GPTQ's evaluation does), each scored on its tokens 1..seq_len-1 given the ones before. Windows
// go round-robin to DP groups; the model runs over TP; the cross-entropy is computed vocabulary-sharded.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/model/transformer.h"

#include <string>
#include <vector>

namespace qforge::tok {
class Tokenizer;
}

namespace qforge::eval {

struct PerplexityResult {
  int64_t windows = 0;
  int64_t tokens = 0;  // tokens scored
  double mean_nll = 0;  // nats per token
  double perplexity = 0;
};

// Collective over the model's TP group and over `dp`. Every rank returns the job-wide result.
PerplexityResult perplexity(model::CausalLM& model, const torch::Tensor& tokens, int64_t seq_len, int64_t batch_size,
                            dist::Communicator& dp);

// A text file as one token stream: the whole file encoded at once, with one BOS at the start (the usual
// WikiText-2 recipe). Throws naming the file when it cannot be read or holds no text.
torch::Tensor tokenize_text_file(const std::string& path, const tok::Tokenizer& tokenizer);

// WikiText-2 as GPTQ and RPTQ evaluate it: the raw test file's lines as Hugging Face's wikitext-2-raw-v1 rows
// (a line with text keeps its newline, a blank line is an empty row) joined with "\n\n", encoded at once with
// one BOS.
torch::Tensor wikitext2_tokens(const std::string& path, const tok::Tokenizer& tokenizer);

// C4 as GPTQ's get_c4 evaluates it: `windows` windows of `seq_len` tokens, each from a document drawn at random
// among those of at least seq_len + 1 tokens (encoded alone, with BOS) at a random offset, concatenated. Drawn
// with std::mt19937_64(seed), not Python's random: the windows are GPTQ's recipe, not its draw. `path` is JSON
// Lines with a "text" string per line; a line that is not is a qforge::Error naming the file and line.
torch::Tensor c4_windows(const std::string& path, const tok::Tokenizer& tokenizer, int64_t seq_len,
                         int64_t windows = 256, uint64_t seed = 0);

}  // namespace qforge::eval
