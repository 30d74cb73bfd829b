// The root config of `qforge`: one YAML file can describe a whole campaign; each command reads the sections
// it needs and every key is checked (an unknown key anywhere is an error).
#pragma once

#include "distill/corpus_generator.h"
#include "distill/distillation.h"
#include "framework/config/settings.h"
#include "framework/train/trainer.h"
#include "launch/pipeline_settings.h"
#include "launch/pretrain_settings.h"
#include "quant/ptq.h"
#include "quant/qat.h"
#include "rptq/settings.h"

namespace qforge {

struct QforgeConfig {
  ParallelSettings parallel;
  RuntimeSettings runtime;
  LogSettings log;
  OutputSettings output;
  ModelSettings model;
  EvalSettings eval;
  GenerateTextSettings generate_text;
  distill::CorpusSettings generate;
  quant::QuantSettings quant;
  distill::DistillSettings distill;
  train::TrainSettings train;
  quant::PtqSettings ptq;
  rptq::RptqSettings rptq;
  PipelineSettings pipeline;
  PretrainSettings pretrain;

  template <class V>
  void visit(V& v) {
    v("parallel", parallel);
    v("runtime", runtime);
    v("log", log);
    v("output", output);
    v("model", model);
    v("eval", eval);
    v("generate_text", generate_text);
    v("generate", generate);
    v("quant", quant);
    v("distill", distill);
    v("train", train);
    v("ptq", ptq);
    v("rptq", rptq);
    v("pipeline", pipeline);
    v("pretrain", pretrain);
  }
};

}  // namespace qforge
