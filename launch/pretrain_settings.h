// Config section `pretrain` (qforge pretrain, docs/pretrain.md): the text, the held-out part, the LLaMA to
// train from scratch with a byte-level tokenizer, and the trainer's settings with pretraining's defaults.
#pragma once

#include "framework/config/config.h"
#include "framework/train/trainer.h"

#include <string>

namespace qforge {

struct PretrainSettings {
  std::string text;       // plain text, or gzip (Debian's /usr/share/doc/jargon-text/jargon.txt.gz)
  double holdout = 0.05;  // fraction of the text, from its end, held out for evaluation
  int64_t seq_len = 128;  // tokens per training window and per evaluation window; the model's context
  int64_t hidden = 192;
  int64_t layers = 4;
  int64_t heads = 6;
  int64_t kv_heads = 6;
  int64_t intermediate = 0;  // MLP width; 0: hidden * 8 / 3 rounded up to 16 (LLaMA's rule, as init-model's)
  double init_std = 0.02;    // standard deviation of the initial weights
  int64_t seed = 0;          // initial weights (train.seed orders the data)
  int64_t eval_batch = 8;    // windows per forward pass of the evaluation
  train::TrainSettings train = defaults();

  static train::TrainSettings defaults() {
    train::TrainSettings t;
    t.global_batch = 16;
    t.micro_batch = 8;
    t.max_steps = 500;
    t.lr = 7e-4;
    t.min_lr = 7e-5;
    t.warmup_steps = 20;
    t.weight_decay = 0.1;
    t.beta2 = 0.99;
    t.save_every = 100;
    return t;
  }

  template <class V>
  void visit(V& v) {
    v("text", text);
    v("holdout", holdout, [](double f) { return f > 0 && f < 1 ? std::string() : std::string("in (0, 1)"); });
    v("seq_len", seq_len, config::at_least(3));
    v("hidden", hidden, config::at_least(1));
    v("layers", layers, config::at_least(1));
    v("heads", heads, config::at_least(1));
    v("kv_heads", kv_heads, config::at_least(1));
    v("intermediate", intermediate, config::at_least(0));
    v("init_std", init_std, [](double s) { return s > 0 && s <= 10 ? std::string() : std::string("in (0, 10]"); });
    v("seed", seed, config::at_least(0));
    v("eval_batch", eval_batch, config::at_least(1));
    v("train", train);
  }
};

}  // namespace qforge
