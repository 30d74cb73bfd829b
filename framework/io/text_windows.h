// Plain text as training data: a text file read whole (gzip-compressed or not), and a token stream cut into
// consecutive windows written as a corpus file (corpus.h) that train::Trainer reads.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::io {

// The bytes of a text file, decompressed when it is gzip (Debian ships texts as .gz): zlib's gzread, which
// passes any other file through unchanged. Throws qforge::Error naming the file when it is missing, cannot be
// read or decompressed, or holds no text.
std::string read_text_file(const std::string& path);

// Windows of a text: `tokens` cut into consecutive, non-overlapping samples of `seq_len` tokens (the last one
// shorter, dropped when it has fewer than 2), written with write_corpus_file. `attributes` go into the file's
// identity (the text's checksum, the tokenizer). Returns the number of samples. Throws naming `path` when there
// is not one sample.
int64_t write_window_corpus(const std::string& path, const std::vector<int64_t>& tokens, int64_t seq_len,
                            int64_t vocab_size, const nlohmann::json& attributes);

}  // namespace qforge::io
