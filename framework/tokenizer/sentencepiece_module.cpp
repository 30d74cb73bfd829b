// The SentencePiece module: Google's SentencePieceProcessor behind the C interface of sentencepiece_module.h.
// Built as a shared library on its own (no libtorch, no framework) and loaded in a separate link-map namespace.
#include "framework/tokenizer/sentencepiece_module.h"

#include <sentencepiece_processor.h>

#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using sentencepiece::SentencePieceProcessor;

void report(const QforgeSpOutput* output, const std::string& message) {
  output->error(output->context, message.data(), message.size());
}

// Runs `body`, turning a SentencePiece error status or any exception into -1 and a message: nothing may unwind
// into the caller's namespace.
template <class Body>
int guarded(const QforgeSpOutput* output, Body body) {
  try {
    const sentencepiece::util::Status status = body();
    if (status.ok()) return 0;
    report(output, status.ToString());
  } catch (const std::exception& e) {
    report(output, e.what());
  } catch (...) {
    report(output, "unknown exception inside SentencePiece");
  }
  return -1;
}

const SentencePieceProcessor& processor_of(const void* processor) {
  return *static_cast<const SentencePieceProcessor*>(processor);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int qforge_sp_load(const char* model, std::size_t size, void** processor,
                                                          const QforgeSpOutput* output) {
  *processor = nullptr;
  return guarded(output, [&] {
    auto loaded = std::make_unique<SentencePieceProcessor>();
    sentencepiece::util::Status status = loaded->LoadFromSerializedProto(std::string(model, size));
    if (status.ok()) *processor = loaded.release();
    return status;
  });
}

__attribute__((visibility("default"))) void qforge_sp_free(void* processor) {
  delete static_cast<SentencePieceProcessor*>(processor);
}

__attribute__((visibility("default"))) int qforge_sp_info(const void* processor, QforgeSpModelInfo* info,
                                                          const QforgeSpOutput* output) {
  return guarded(output, [&] {
    info->vocab_size = processor_of(processor).GetPieceSize();
    info->bos_id = processor_of(processor).bos_id();
    info->eos_id = processor_of(processor).eos_id();
    return sentencepiece::util::Status();
  });
}

__attribute__((visibility("default"))) int qforge_sp_piece(const void* processor, int id, int* type,
                                                           const QforgeSpOutput* output) {
  return guarded(output, [&] {
    const SentencePieceProcessor& sp = processor_of(processor);
    *type = sp.IsControl(id) ? kQforgeSpControl
            : sp.IsByte(id)  ? kQforgeSpByte
            : sp.IsUnknown(id) ? kQforgeSpUnknown
                               : kQforgeSpNormal;
    const std::string& piece = sp.IdToPiece(id);
    output->text(output->context, piece.data(), piece.size());
    return sentencepiece::util::Status();
  });
}

__attribute__((visibility("default"))) int qforge_sp_encode(const void* processor, const char* text, std::size_t size,
                                                            const QforgeSpOutput* output) {
  return guarded(output, [&] {
    std::vector<int> ids;
    sentencepiece::util::Status status = processor_of(processor).Encode(std::string(text, size), &ids);
    if (status.ok()) output->ids(output->context, ids.data(), ids.size());
    return status;
  });
}

__attribute__((visibility("default"))) int qforge_sp_decode(const void* processor, const int* ids, std::size_t count,
                                                            const QforgeSpOutput* output) {
  return guarded(output, [&] {
    std::string text;
    sentencepiece::util::Status status = processor_of(processor).Decode(std::vector<int>(ids, ids + count), &text);
    if (status.ok()) output->text(output->context, text.data(), text.size());
    return status;
  });
}

}  // extern "C"

static_assert(std::is_same_v<decltype(&qforge_sp_load), QforgeSpLoad>);
static_assert(std::is_same_v<decltype(&qforge_sp_free), QforgeSpFree>);
static_assert(std::is_same_v<decltype(&qforge_sp_info), QforgeSpInfo>);
static_assert(std::is_same_v<decltype(&qforge_sp_piece), QforgeSpPiece>);
static_assert(std::is_same_v<decltype(&qforge_sp_encode), QforgeSpEncode>);
static_assert(std::is_same_v<decltype(&qforge_sp_decode), QforgeSpDecode>);
