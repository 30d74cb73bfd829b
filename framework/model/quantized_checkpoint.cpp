#include "framework/model/quantized_checkpoint.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <map>
#include <mutex>

namespace qforge::model {
namespace {

std::mutex registry_mutex;

std::map<std::string, QuantizedReaderFactory>& registry() {
  static std::map<std::string, QuantizedReaderFactory> formats;
  return formats;
}

}  // namespace

void register_quantized_format(const std::string& quant_method, QuantizedReaderFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry()[quant_method] = std::move(factory);
}

std::vector<std::string> registered_quantized_formats() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::unique_ptr<QuantizedWeightReader> quantized_weight_reader(const nlohmann::json& config_json,
                                                               const std::string& config_path,
                                                               const io::Checkpoint& checkpoint) {
  const auto it = config_json.find("quantization_config");
  if (it == config_json.end() || it->is_null()) return nullptr;
  return make_quantized_reader(*it, config_path, checkpoint);
}

std::unique_ptr<QuantizedWeightReader> make_quantized_reader(const nlohmann::json& quantization_config,
                                                             const std::string& config_path,
                                                             const io::Checkpoint& checkpoint) {
  const nlohmann::json* it = &quantization_config;
  const auto method = it->find("quant_method");
  if (method == it->end() || !method->is_string())
    throw Error(fmt::format("{}: quantization_config has no string \"quant_method\"; expected e.g. \"gptq\"",
                            config_path));
  QuantizedReaderFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    const auto found = registry().find(method->get<std::string>());
    if (found != registry().end()) factory = found->second;
  }
  if (!factory) {
    std::string known;
    for (const std::string& name : registered_quantized_formats()) known += (known.empty() ? "" : ", ") + name;
    throw Error(fmt::format("{}: quantization_config.quant_method \"{}\" is not a format this program reads "
                            "(it reads: {})", config_path, method->get<std::string>(), known.empty() ? "none" : known));
  }
  return factory(*it, config_path, checkpoint);
}

}  // namespace qforge::model
