#include "framework/train/checkpoint_manifest.h"

#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
#include "framework/common/error.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace qforge::train {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kManifestFormat = 1;

json body_of(const CheckpointManifest& manifest) {
  json files = json::array();
  for (const ManifestEntry& e : manifest.files)
    files.push_back({{"name", e.name}, {"bytes", e.bytes}, {"xxh64", hex64(e.xxh64)}});
  return {{"format", kManifestFormat}, {"step", manifest.step},     {"files", files},
          {"run", manifest.fingerprint}, {"inputs", manifest.inputs}};
}

uint64_t parse_hex64(const std::string& text, const std::string& where) {
  if (text.size() != 16 || text.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw Error(fmt::format("{}: '{}' is not a checksum of 16 hex digits", where, text));
  return std::stoull(text, nullptr, 16);
}

}  // namespace

void write_manifest(const std::string& dir, const CheckpointManifest& manifest) {
  json document = body_of(manifest);
  const std::string body = document.dump();
  document["checksum"] = hex64(xxh64(body.data(), body.size()));
  write_file_atomically((fs::path(dir) / kManifestFile).string(), document.dump(2) + "\n");
}

CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestFile).string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read checkpoint manifest '{}'", path));
  std::stringstream text;
  text << in.rdbuf();
  json document = json::parse(text.str(), nullptr, false);
  if (document.is_discarded() || !document.is_object() || !document.contains("checksum") ||
      !document["checksum"].is_string())
    throw Error(fmt::format("checkpoint manifest '{}' is not a JSON object with a checksum", path));
  const uint64_t recorded = parse_hex64(document["checksum"].get<std::string>(), path);
  document.erase("checksum");
  const std::string body = document.dump();
  if (xxh64(body.data(), body.size()) != recorded)
    throw Error(fmt::format("checkpoint manifest '{}' does not match its own checksum: it was edited or damaged",
                            path));
  CheckpointManifest manifest;
  try {
    if (document.at("format").get<int>() != kManifestFormat)
      throw Error(fmt::format("checkpoint manifest '{}' has format {}, only {} is known", path,
                              document.at("format").dump(), kManifestFormat));
    manifest.step = document.at("step").get<int64_t>();
    for (const json& e : document.at("files"))
      manifest.files.push_back({e.at("name").get<std::string>(), e.at("bytes").get<int64_t>(),
                                parse_hex64(e.at("xxh64").get<std::string>(), path)});
    manifest.fingerprint = document.at("run");
    manifest.inputs = document.at("inputs");
  } catch (const json::exception& e) {
    throw Error(fmt::format("checkpoint manifest '{}' lacks a key or has one of the wrong type: {}", path, e.what()));
  }
  return manifest;
}

std::string verify_entry(const std::string& dir, const ManifestEntry& entry) {
  const fs::path path = fs::path(dir) / entry.name;
  std::error_code error;
  const auto bytes = fs::file_size(path, error);
  if (error) return fmt::format("'{}' is missing or unreadable ({})", path.string(), error.message());
  if (static_cast<int64_t>(bytes) != entry.bytes)
    return fmt::format("'{}' has {} bytes, its manifest records {}", path.string(), bytes, entry.bytes);
  try {
    const FileChecksum found = checksum_file(path.string());
    if (found.bytes != entry.bytes || found.xxh64 != entry.xxh64)
      return fmt::format("'{}' does not match its checksum (XXH64 {} recorded, {} read): its bytes changed after "
                         "it was saved", path.string(), hex64(entry.xxh64), hex64(found.xxh64));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string first_fingerprint_difference(const json& saved, const json& current) {
  std::set<std::string> keys;
  for (const auto& item : saved.items()) keys.insert(item.key());
  for (const auto& item : current.items()) keys.insert(item.key());
  for (const std::string& key : keys)
    if (!saved.contains(key) || !current.contains(key) || saved.at(key) != current.at(key)) return key;
  return "";
}

std::string fingerprint_value(const json& fingerprint, const std::string& key) {
  if (!fingerprint.contains(key)) return "(absent)";
  const json& value = fingerprint.at(key);
  return value.is_string() ? value.get<std::string>() : value.dump();
}

}  // namespace qforge::train
