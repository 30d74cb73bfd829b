// The architectures of the published LLaMA, Llama 2 and OPT checkpoints, by name ("llama-65b", "opt-6.7b"):
// config key model.architecture, so that `qforge plan` can size a job for a model that is not on disk.
#pragma once

#include "framework/model/model_config.h"

#include <string>
#include <vector>

namespace qforge::model {

std::vector<std::string> architecture_names();

// The named architecture, as its Hugging Face config.json describes it. Throws UsageError listing the names.
ModelConfig architecture(const std::string& name);

}  // namespace qforge::model
