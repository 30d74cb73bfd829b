// SentencePiece .model files, through Google's SentencePieceProcessor running in the SentencePiece module, which
// is loaded into a link-map namespace of its own (sentencepiece_module.h says why).
#include "framework/common/error.h"
#include "framework/tokenizer/sentencepiece_module.h"
#include "framework/tokenizer/tokenizer.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <memory>

namespace qforge::tok {
namespace {

struct SentencePieceModule {
  QforgeSpLoad load;
  QforgeSpFree free;
  QforgeSpInfo info;
  QforgeSpPiece piece;
  QforgeSpEncode encode;
  QforgeSpDecode decode;
};

// The module built beside the framework; QFORGE_SENTENCEPIECE_MODULE names another copy.
std::string module_path() {
  const char* path = std::getenv("QFORGE_SENTENCEPIECE_MODULE");
  return path != nullptr && *path != '\0' ? path : QFORGE_SENTENCEPIECE_MODULE_PATH;
}

SentencePieceModule open_module(const std::string& model_path) {
  const std::string path = module_path();
  void* handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr)
    throw Error(fmt::format("{}: cannot load the SentencePiece module {} ({}); set QFORGE_SENTENCEPIECE_MODULE to "
                            "the path of libqforge_sentencepiece.so",
                            model_path, path, dlerror()));
  auto symbol = [&](const char* name) {
    void* address = dlsym(handle, name);
    if (address == nullptr)
      throw Error(fmt::format("{}: the SentencePiece module {} has no function {}", model_path, path, name));
    return address;
  };
  return {reinterpret_cast<QforgeSpLoad>(symbol("qforge_sp_load")),
          reinterpret_cast<QforgeSpFree>(symbol("qforge_sp_free")),
          reinterpret_cast<QforgeSpInfo>(symbol("qforge_sp_info")),
          reinterpret_cast<QforgeSpPiece>(symbol("qforge_sp_piece")),
          reinterpret_cast<QforgeSpEncode>(symbol("qforge_sp_encode")),
          reinterpret_cast<QforgeSpDecode>(symbol("qforge_sp_decode"))};
}

// Loaded once per process and never unloaded: a namespace is a scarce resource (glibc allows 16).
const SentencePieceModule& sentencepiece_module(const std::string& model_path) {
  static const SentencePieceModule module = open_module(model_path);  // retried on the next call if it throws
  return module;
}

// What one module call wrote, copied into this namespace's memory.
struct Collected {
  std::string text;
  std::vector<int> ids;
  std::string error;

  QforgeSpOutput output() { return {this, &on_text, &on_ids, &on_error}; }

 private:
  static void on_text(void* self, const char* data, std::size_t size) {
    static_cast<Collected*>(self)->text.assign(data, size);
  }
  static void on_ids(void* self, const int* ids, std::size_t count) {
    static_cast<Collected*>(self)->ids.assign(ids, ids + count);
  }
  static void on_error(void* self, const char* data, std::size_t size) {
    static_cast<Collected*>(self)->error.assign(data, size);
  }
};

const std::string kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's spelling of a space

std::string with_spaces(std::string piece) {
  for (std::size_t at = piece.find(kSpaceSymbol); at != std::string::npos; at = piece.find(kSpaceSymbol, at + 1))
    piece.replace(at, kSpaceSymbol.size(), " ");
  return piece;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  using Processor = std::unique_ptr<void, QforgeSpFree>;  // a model the module has loaded

  SentencePieceTokenizer(std::string path, const SentencePieceModule& module, Processor processor)
      : path_(std::move(path)), module_(module), processor_(std::move(processor)) {
    QforgeSpModelInfo info{};
    Collected out;
    QforgeSpOutput output = out.output();
    check(module_.info(processor_.get(), &info, &output), out, "read the model's vocabulary");
    bos_id_ = info.bos_id;
    eos_id_ = info.eos_id;
    for (int id = 0; id < info.vocab_size; ++id) {
      int type = kQforgeSpNormal;
      check(module_.piece(processor_.get(), id, &type, &output), out, "read the model's vocabulary");
      pieces_.push_back(out.text);
      types_.push_back(type);
    }
  }
  std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const override {
    Collected out;
    QforgeSpOutput output = out.output();
    check(module_.encode(processor_.get(), text.data(), text.size(), &output), out, "encode text");
    std::vector<int64_t> ids;
    ids.reserve(out.ids.size() + 2);
    if (bos) ids.push_back(defined_id(bos_id_, "BOS"));
    ids.insert(ids.end(), out.ids.begin(), out.ids.end());
    if (eos) ids.push_back(defined_id(eos_id_, "EOS"));
    return ids;
  }

  // SentencePiece itself skips control ids (BOS, EOS, padding) and strips the first piece's leading space.
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> pieces;
    pieces.reserve(ids.size());
    for (int64_t id : ids) {
      check_id(id);
      pieces.push_back(static_cast<int>(id));
    }
    Collected out;
    QforgeSpOutput output = out.output();
    check(module_.decode(processor_.get(), pieces.data(), pieces.size(), &output), out, "decode token ids");
    return out.text;
  }

  std::string decode_next(int64_t previous, int64_t id) const override {
    check_id(id);
    if (types_[id] == kQforgeSpControl) return "";
    if (types_[id] == kQforgeSpByte) {  // "<0xXX>"
      return std::string(1, static_cast<char>(std::stoi(pieces_[id].substr(3, 2), nullptr, 16)));
    }
    std::string text = with_spaces(pieces_[id]);
    if (previous == bos_id_ && !text.empty() && text[0] == ' ') text.erase(0, 1);
    return text;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  std::string piece(int64_t id) const override {
    check_id(id);
    return pieces_[id];
  }
  std::string kind() const override { return "sentencepiece"; }

 private:
  void check(int result, const Collected& out, const char* what) const {
    if (result != 0) throw Error(fmt::format("{}: SentencePiece could not {}: {}", path_, what, out.error));
  }
  // SentencePiece aborts the process on an id outside the vocabulary.
  void check_id(int64_t id) const {
    if (id < 0 || id >= vocab_size())
      throw Error(fmt::format("token id {} is outside the vocabulary of {} pieces of {}", id, vocab_size(), path_));
  }
  int64_t defined_id(int64_t id, const char* name) const {
    if (id < 0) throw Error(fmt::format("{}: the SentencePiece model defines no {} piece", path_, name));
    return id;
  }

  std::string path_;
  const SentencePieceModule& module_;
  Processor processor_;
  int64_t bos_id_ = -1;
  int64_t eos_id_ = -1;
  std::vector<std::string> pieces_;
  std::vector<int> types_;  // QforgeSpPieceType of each id
};

}  // namespace

std::unique_ptr<Tokenizer> sentencepiece_tokenizer_from_bytes(const std::string& path, const std::string& bytes) {
  const SentencePieceModule& module = sentencepiece_module(path);
  void* processor = nullptr;
  Collected out;
  QforgeSpOutput output = out.output();
  if (module.load(bytes.data(), bytes.size(), &processor, &output) != 0)
    throw Error(fmt::format("{}: not a valid SentencePiece model ({}), expected a serialized ModelProto such as "
                            "LLaMA's tokenizer.model",
                            path, out.error));
  return std::make_unique<SentencePieceTokenizer>(path, module,
                                                  SentencePieceTokenizer::Processor(processor, module.free));
}

}  // namespace qforge::tok
