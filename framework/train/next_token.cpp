#include "framework/train/next_token.h"

#include "framework/model/parallel.h"

#include <algorithm>

namespace qforge::train {

MicroStep next_token_step(model::CausalLM& model, const io::CorpusReader& corpus) {
  return [&model, &corpus](const std::vector<int64_t>& samples, double step_tokens) {
    auto [tokens, lengths] = corpus.batch(samples);
    const int64_t width = std::max<int64_t>(2, lengths.max().item<int64_t>());  // trailing padding trimmed
    const torch::Device device = model.head->weight.device();
    tokens = tokens.narrow(1, 0, width).to(device);
    const torch::Tensor logits = model.forward(tokens.narrow(1, 0, width - 1));  // the last token predicts nothing
    const torch::Tensor targets = tokens.narrow(1, 1, width - 1).reshape(-1);
    const torch::Tensor nll = model::vocab_parallel_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets,
                                                                  model.tp(), model.vocab_start());
    // Position t predicts token t + 1 of its sample: it counts while t + 1 < length.
    const torch::Tensor counted = (torch::arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)).to(device);
    const torch::Tensor sum = (nll * counted.reshape(-1).to(nll.options())).sum();
    (sum / step_tokens).backward();
    return sum.item<double>();
  };
}

}  // namespace qforge::train
