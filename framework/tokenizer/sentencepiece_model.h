// A SentencePiece .model (a serialized sentencepiece.ModelProto) read straight from the protobuf wire format: the
// fields a BPE tokenizer needs, checked as SentencePiece's own loader checks them. Internal to framework/tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::tok {

// ModelProto.SentencePiece.Type.
enum class PieceType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// TrainerSpec.ModelType.
enum class ModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

// NormalizerSpec, for ModelProto.normalizer_spec and denormalizer_spec; the defaults are the .proto's.
struct NormalizerSpec {
  std::string name;                      // field 1, e.g. "identity" or "nmt_nfkc"
  std::string precompiled_charsmap;      // field 2: the normalization rules; empty for "identity"
  bool add_dummy_prefix = true;          // field 3
  bool remove_extra_whitespaces = true;  // field 4
  bool escape_whitespaces = true;        // field 5
};

struct SentencePieceModel {
  // ModelProto.pieces (field 1), one entry per id.
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceType> types;
  // ModelProto.trainer_spec (field 2).
  ModelType model_type = ModelType::kUnigram;  // field 3
  bool treat_whitespace_as_suffix = false;     // field 24
  bool byte_fallback = false;                  // field 35
  int32_t unk_id = 0;                          // field 40
  int32_t bos_id = 1;                          // field 41; -1: none
  int32_t eos_id = 2;                          // field 42; -1: none
  int32_t pad_id = -1;                         // field 43; -1: none
  std::string unk_surface = " \xE2\x81\x87 ";  // field 44: " ⁇ ", what decoding writes for the unknown piece
  NormalizerSpec normalizer;                   // ModelProto field 3
  NormalizerSpec denormalizer;                 // ModelProto field 5
};

// Parses and checks the bytes of a .model file. Anything malformed (a truncated varint, a length past the end, a
// known field with the wrong wire type, no pieces, a piece SentencePiece would refuse) is a qforge::Error naming
// `path` and what was wrong. Unknown fields of every wire type are skipped.
SentencePieceModel read_sentencepiece_model(const std::string& path, const std::string& bytes);

}  // namespace qforge::tok
