// The C interface of the SentencePiece module (sentencepiece_module.cpp), a shared library that the framework
// loads with dlmopen into a link-map namespace of its own.
//
// Why: Debian's libsentencepiece.so.0 carries its own copy of protobuf-lite 3.14 and exports its symbols, while
// libtorch loads the system libprotobuf 3.21. In one namespace the first-loaded copy serves both libraries:
// libprotobuf's static initializers then run into SentencePiece's copy and every program that links both crashes
// before main; loaded the other way round, SentencePiece's parser would run on libprotobuf 3.21's internals. In its
// own namespace SentencePiece keeps its protobuf (and its own C and C++ runtimes), so only plain C data crosses
// the boundary: memory is never freed on the other side; results come back through callbacks that copy them.
#pragma once

#include <cstddef>

extern "C" {

// Where the module writes what a call produces; `context` is passed back to every callback unchanged.
struct QforgeSpOutput {
  void* context;
  void (*text)(void* context, const char* data, std::size_t size);
  void (*ids)(void* context, const int* ids, std::size_t count);
  void (*error)(void* context, const char* data, std::size_t size);
};

// A piece's kind, from SentencePiece's IsControl / IsByte / IsUnknown.
enum QforgeSpPieceType { kQforgeSpNormal = 0, kQforgeSpControl = 1, kQforgeSpByte = 2, kQforgeSpUnknown = 3 };

struct QforgeSpModelInfo {
  int vocab_size;
  int bos_id;  // -1 when the model has none
  int eos_id;
};

// Each returns 0 on success; on failure it returns -1 after passing a message to output->error.
// Load a serialized ModelProto; *processor receives the handle.
typedef int (*QforgeSpLoad)(const char* model, std::size_t size, void** processor, const QforgeSpOutput* output);
typedef void (*QforgeSpFree)(void* processor);
typedef int (*QforgeSpInfo)(const void* processor, QforgeSpModelInfo* info, const QforgeSpOutput* output);
// The piece of `id` goes to output->text; *type receives its QforgeSpPieceType. `id` must be in range.
typedef int (*QforgeSpPiece)(const void* processor, int id, int* type, const QforgeSpOutput* output);
// The ids of `text` go to output->ids.
typedef int (*QforgeSpEncode)(const void* processor, const char* text, std::size_t size, const QforgeSpOutput* output);
// The text of `ids` goes to output->text. Every id must be in range.
typedef int (*QforgeSpDecode)(const void* processor, const int* ids, std::size_t count, const QforgeSpOutput* output);

}  // extern "C"
