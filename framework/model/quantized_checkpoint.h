// Checkpoints whose linears are stored quantized (config.json carries a Hugging Face `quantization_config`):
// the framework dispatches on its quant_method to a reader that a method library registers (quant/ registers
// "gptq"), so that load_pretrained reads them without the framework knowing any format.
#pragma once

#include "framework/model/parallel.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace qforge::io {
class Checkpoint;
}

namespace qforge::model {

class CausalLM;

class QuantizedWeightReader {
 public:
  virtual ~QuantizedWeightReader() = default;
  // Fills this rank's shard of `e` (any dtype) when the checkpoint stores it quantized and returns true; false
  // leaves it to the ordinary path (embeddings, norms, biases, linears kept in full precision).
  virtual bool load(const WeightEntry& e) const = 0;
  // Called once every weight is loaded: a format that changes the computation (fused reorders, static activation
  // quantizers) installs that on the model here. Collective over the model's TP group when it says so.
  virtual void finish(CausalLM& model) const { (void)model; }
};

// Builds the reader of one checkpoint from config.json's quantization_config (`config_path` names it in errors).
using QuantizedReaderFactory = std::function<std::unique_ptr<QuantizedWeightReader>(
    const nlohmann::json& quantization_config, const std::string& config_path, const io::Checkpoint& checkpoint)>;

// Registers (or replaces) the reader of `quant_method`. Call before loading, e.g. at program start.
void register_quantized_format(const std::string& quant_method, QuantizedReaderFactory factory);
std::vector<std::string> registered_quantized_formats();  // sorted

// The reader for a checkpoint whose config.json (`config_path`) holds `config_json`, or nullptr when it has no
// quantization_config. Throws qforge::Error naming the file when quant_method is missing or not registered.
std::unique_ptr<QuantizedWeightReader> quantized_weight_reader(const nlohmann::json& config_json,
                                                               const std::string& config_path,
                                                               const io::Checkpoint& checkpoint);
// The reader of one quantization_config object (e.g. a format nested in another's); errors as above.
std::unique_ptr<QuantizedWeightReader> make_quantized_reader(const nlohmann::json& quantization_config,
                                                             const std::string& config_path,
                                                             const io::Checkpoint& checkpoint);

}  // namespace qforge::model
