#include "rptq/settings.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <map>

namespace qforge::rptq {
namespace {

const std::map<std::string, SettingBits>& table_rows() {
  static const std::map<std::string, SettingBits> rows = {
      {"W4A16", {4, 16, false}}, {"W4A8", {4, 8, false}},  {"W4A4", {4, 4, false}},
      {"W4A4KV", {4, 4, true}},  {"W4A3KV", {4, 3, true}}, {"W3A3KV", {3, 3, true}}};
  return rows;
}

}  // namespace

std::string RptqSettings::setting_problem(const std::string& text) {
  if (text.empty() || table_rows().count(text)) return "";
  return "empty or one of W4A16, W4A8, W4A4, W4A4KV, W4A3KV, W3A3KV";
}

std::string RptqSettings::reorder_problem(const std::vector<std::string>& sites) {
  for (const std::string& site : sites)
    if (site != "R1" && site != "R2" && site != "R3" && site != "R4" && site != "R5")
      return fmt::format("a list of R1..R5 (got '{}')", site);
  return "";
}

std::string RptqSettings::compare_problem(const std::vector<std::string>& modes) {
  for (const std::string& mode : modes)
    if (mode != "none" && mode != "per_token" && mode != "per_tensor" && mode != "rptq")
      return fmt::format("a list of none, per_token, per_tensor, rptq (got '{}')", mode);
  return "";
}

bool RptqSettings::reorders(const std::string& site) const {
  return std::find(reorder.begin(), reorder.end(), site) != reorder.end();
}

std::string RptqSettings::describe(int wbits) const {
  std::string text = fmt::format("W{}A{}{}", wbits, act_bits, kv_only ? "KV" : "");
  if (act_bits == 16) text = fmt::format("W{}A16", wbits);
  text += fmt::format(" {} activations, {} grid, {} calibration, reorder {}", activations, grid, calibration,
                      reorder.empty() ? std::string("none") : fmt::format("{}", fmt::join(reorder, ",")));
  return text;
}

SettingBits parse_setting(const std::string& text) {
  auto it = table_rows().find(text);
  if (it == table_rows().end())
    throw UsageError(fmt::format("rptq.setting '{}' must be {}", text, RptqSettings::setting_problem("?")));
  return it->second;
}

}  // namespace qforge::rptq
