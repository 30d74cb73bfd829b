// What corpus.cpp (identity, journals) and corpus_file.cpp (HDF5) share; not part of the public interface.
#pragma once

#include "framework/io/corpus.h"

#include <nlohmann/json.hpp>

#include <string>

namespace qforge::io::detail {

// The identity's integer keys, stored as JSON members (journal header) or HDF5 attributes; topk may be absent.
inline constexpr const char* kIntegerKeys[] = {"num_samples", "seq_len", "vocab_size", "topk"};
inline constexpr const char* kRequiredIntegerKeys[] = {"num_samples", "seq_len", "vocab_size"};

std::string parent_dir(const std::string& path);  // "." for a bare name
void fsync_directory(const std::string& dir);     // best effort
void fsync_path(const std::string& path);         // throws naming the file
// Throws naming `where` unless `j` holds the integer keys and an object "attributes".
CorpusIdentity identity_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace qforge::io::detail
