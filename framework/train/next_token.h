// Pretraining's loss as a training micro-step: ordinary next-token cross-entropy on the corpus's own tokens,
// L = -(1/n) sum_i log p(x_{i+1} | x_0..x_i) over every position i that predicts a token of its own sample. The
// logits stay sharded by vocabulary over the model's TP group (model::vocab_parallel_cross_entropy).
#pragma once

#include "framework/io/corpus.h"
#include "framework/model/transformer.h"
#include "framework/train/trainer.h"

#include <cstdint>

namespace qforge::train {

// Positions of a sample of `length` tokens that carry a loss: each of the first length - 1 predicts the next.
inline int64_t next_token_positions(int64_t length) { return length > 0 ? length - 1 : 0; }

// The micro-step for Trainer: forward of the batch's tokens but the last, the vocabulary-parallel cross-entropy
// against the tokens shifted by one (positions past a sample's length masked out), backward of sum / the step's
// tokens. Returns the local sum of per-token losses.
MicroStep next_token_step(model::CausalLM& model, const io::CorpusReader& corpus);

}  // namespace qforge::train
