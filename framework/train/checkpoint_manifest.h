// The manifest of a training checkpoint: manifest.json in the step directory, written last and atomically, lists
// every file of the checkpoint with its size and XXH64, the step, and the run's fingerprint: the settings and
// inputs a resumed run must share with the checkpoint (flat keys: "train.lr", "quant.bits", "corpus.checksum").
// The manifest carries a checksum of its own, so an edited manifest is damage like an edited shard; a step
// directory without one is a save that never finished.
#pragma once

#include "framework/config/config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::train {

constexpr const char* kManifestFile = "manifest.json";

struct ManifestEntry {
  std::string name;  // relative to the step directory
  int64_t bytes = 0;
  uint64_t xxh64 = 0;
};

struct CheckpointManifest {
  int64_t step = 0;
  std::vector<ManifestEntry> files;
  nlohmann::json fingerprint = nlohmann::json::object();  // compared on resume, key by key
  nlohmann::json inputs = nlohmann::json::object();       // where the inputs were ("corpus.path"): for messages
};

// Writes dir/manifest.json under a temporary name and renames it.
void write_manifest(const std::string& dir, const CheckpointManifest& manifest);

// Reads dir/manifest.json and checks its own checksum. Throws qforge::Error naming the file when it is
// unreadable, not JSON, incomplete or edited.
CheckpointManifest read_manifest(const std::string& dir);

// "" when dir/entry.name has the recorded size and checksum, else a sentence saying what is wrong, naming the file.
// The file is read in chunks (never whole into memory).
std::string verify_entry(const std::string& dir, const ManifestEntry& entry);

// The first key, in sorted order, whose value differs between two fingerprints (a key only one of them has
// included); "" when they agree.
std::string first_fingerprint_difference(const nlohmann::json& saved, const nlohmann::json& current);

// A fingerprint's value as messages show it: strings without quotes, "(absent)" for a missing key.
std::string fingerprint_value(const nlohmann::json& fingerprint, const std::string& key);

// Adds every key of a config section to `fingerprint` as "<prefix>.<key>" (nested sections flattened).
class SettingsFlattener {
 public:
  SettingsFlattener(nlohmann::json& out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}

  template <class T, class Check = config::NoCheck>
  void operator()(const char* key, const T& value, Check = {}) {
    add(prefix_ + "." + key, value);
  }
  template <class T, class Check = config::NoCheck>
  void required(const char* key, const T& value, Check = {}) {
    add(prefix_ + "." + key, value);
  }

 private:
  template <class T>
  void add(const std::string& path, const T& value) {
    if constexpr (config::is_section<T>::value) {
      SettingsFlattener nested(out_, path);
      const_cast<T&>(value).visit(nested);
    } else {
      out_[path] = value;
    }
  }

  nlohmann::json& out_;
  std::string prefix_;
};

template <class Section>
void add_settings(nlohmann::json& fingerprint, const std::string& prefix, const Section& section) {
  SettingsFlattener flattener(fingerprint, prefix);
  const_cast<Section&>(section).visit(flattener);
}

}  // namespace qforge::train
