// LLM-QAT's knowledge distillation as a training micro-step: the student learns the teacher's soft labels on the
// generated corpus, L = -(1/n) sum_i sum_c p_c^T(X_i) log p_c^S(X_i) over every position i that predicts a token
// of its own sample. The teacher is either a full-precision model sharded like the student and run in the same
// job, or its top-K log-probabilities stored in the corpus file (then it need not run at all).
#pragma once

#include "framework/config/config.h"
#include "framework/io/corpus.h"
#include "framework/model/transformer.h"
#include "framework/train/trainer.h"

#include <string>

namespace qforge::distill {

struct DistillSettings {  // config section `distill`
  std::string corpus;              // the corpus file (.h5) written by `qforge generate`
  std::string teacher = "model";   // model: run model.path in full precision; corpus: the corpus's stored top-K
  double temperature = 1.0;        // softmax temperature of both distributions (the teacher = model case)

  template <class V>
  void visit(V& v) {
    v("corpus", corpus);
    v("teacher", teacher, config::one_of({"model", "corpus"}));
    v("temperature", temperature, [](double t) { return t > 0 ? std::string() : std::string("> 0"); });
  }
};

// Positions of a sample of `length` tokens that carry a loss: each of the first length - 1 predicts the next.
inline int64_t distilled_tokens(int64_t length) { return length > 0 ? length - 1 : 0; }

// The micro-step for train::Trainer: forward of the student (and of `teacher`, when given, without gradients),
// the vocabulary-parallel soft cross-entropy, backward of its sum / the step's tokens. With `teacher` null the
// corpus must store top-K log-probs (settings.teacher = corpus). Both models must share the TP group.
train::MicroStep distillation_step(model::CausalLM& student, model::CausalLM* teacher, const io::CorpusReader& corpus,
                                   const DistillSettings& settings);

}  // namespace qforge::distill
