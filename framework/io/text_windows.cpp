#include "framework/io/text_windows.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/io/corpus.h"

#include <fmt/format.h>
#include <zlib.h>

#include <map>

namespace qforge::io {

std::string read_text_file(const std::string& path) {
  check_input_file(path, "a text file");
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw Error(fmt::format("{}: cannot open the text file", path));
  std::string text;
  char buffer[1 << 16];
  int got = 0;
  while ((got = gzread(file, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(got));
  int code = Z_OK;
  const std::string reason = got < 0 ? gzerror(file, &code) : "";
  gzclose(file);
  if (got < 0) throw Error(fmt::format("{}: cannot read the text file ({})", path, reason));
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw Error(fmt::format("{}: holds no text", path));
  return text;
}

int64_t write_window_corpus(const std::string& path, const std::vector<int64_t>& tokens, int64_t seq_len,
                            int64_t vocab_size, const nlohmann::json& attributes) {
  std::map<int64_t, std::vector<int32_t>> samples;
  for (size_t start = 0; start + 2 <= tokens.size(); start += static_cast<size_t>(seq_len)) {
    const size_t end = std::min(tokens.size(), start + static_cast<size_t>(seq_len));
    samples[static_cast<int64_t>(samples.size())] = std::vector<int32_t>(tokens.begin() + start, tokens.begin() + end);
  }
  if (samples.empty())
    throw Error(fmt::format("{}: {} tokens make no training sample (at least 2 are needed)", path, tokens.size()));
  CorpusIdentity identity;
  identity.num_samples = static_cast<int64_t>(samples.size());
  identity.seq_len = seq_len;
  identity.vocab_size = vocab_size;
  identity.attributes = attributes;
  write_corpus_file(path, identity, samples);
  return identity.num_samples;
}

}  // namespace qforge::io
