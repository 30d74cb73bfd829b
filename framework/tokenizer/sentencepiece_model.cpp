#include "framework/tokenizer/sentencepiece_model.h"

#include "framework/common/error.h"
#include "framework/tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>

namespace qforge::tok {
namespace {

enum WireType : int { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

const char* wire_type_name(int wire_type) {
  switch (wire_type) {
    case kVarint:
      return "varint";
    case kFixed64:
      return "fixed64";
    case kLengthDelimited:
      return "length-delimited";
    case kStartGroup:
      return "start-group";
    case kEndGroup:
      return "end-group";
    case kFixed32:
      return "fixed32";
    default:
      return "invalid";
  }
}

struct Tag {
  uint32_t field;
  int wire_type;
};

// Reads one message, bytes [begin, end) of the file, in the protobuf wire format. Every read is bounds-checked;
// a failure is a qforge::Error naming the file, the message, what was wrong and where.
class WireReader {
 public:
  WireReader(const std::string& path, const std::string& bytes, std::size_t begin, std::size_t end, std::string message)
      : path_(path), bytes_(bytes), at_(begin), end_(end), message_(std::move(message)) {}

  bool at_end() const { return at_ == end_; }
  std::size_t offset() const { return at_; }

  [[noreturn]] void fail(const std::string& what, std::size_t at) const {
    throw Error(
        fmt::format("{}: malformed SentencePiece .model: {} at byte {} (in {}), expected a serialized "
                    "sentencepiece.ModelProto such as LLaMA's tokenizer.model",
                    path_, what, at, message_));
  }

  Tag tag() {
    const std::size_t start = at_;
    const uint64_t key = varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    if (key >> 32 != 0 || field == 0) fail(fmt::format("invalid field number {}", key >> 3), start);
    const int wire_type = static_cast<int>(key & 7);
    if (wire_type > kFixed32) fail(fmt::format("field {} has invalid wire type {}", field, wire_type), start);
    return {field, wire_type};
  }

  uint64_t varint() {
    const std::size_t start = at_;
    uint64_t value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (at_ == end_) fail("a varint runs past the end", start);
      const auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    fail("a varint is longer than 10 bytes", start);
  }

  float fixed32_float() {
    need(4, "a fixed32");
    uint32_t bits = 0;
    for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(static_cast<unsigned char>(bytes_[at_ + i])) << (8 * i);
    at_ += 4;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  std::string string() {
    const std::size_t length = length_prefix();
    std::string text = bytes_.substr(at_, length);
    at_ += length;
    return text;
  }

  WireReader message(const std::string& name) {
    const std::size_t length = length_prefix();
    WireReader inner(path_, bytes_, at_, at_ + length, message_ + "." + name);
    at_ += length;
    return inner;
  }

  // Skips the value of a field this reader does not know, groups included (protobuf's recursion limit, 100).
  void skip(const Tag& tag, int depth = 0) {
    const std::size_t start = at_;
    switch (tag.wire_type) {
      case kVarint:
        varint();
        return;
      case kFixed64:
        need(8, "a fixed64");
        at_ += 8;
        return;
      case kFixed32:
        need(4, "a fixed32");
        at_ += 4;
        return;
      case kLengthDelimited:
        at_ += length_prefix();
        return;
      case kStartGroup:
        return skip_group(tag.field, depth);
      default:
        fail(fmt::format("an end-group tag for field {} without its start-group", tag.field), start);
    }
  }

  // A known field must have the wire type its .proto declares.
  void expect(const Tag& tag, int wire_type, const char* name) const {
    if (tag.wire_type != wire_type)
      fail(fmt::format("field {} ({}) has wire type {} ({}), expected {} ({})", tag.field, name, tag.wire_type,
                       wire_type_name(tag.wire_type), wire_type, wire_type_name(wire_type)),
           at_);
  }

  // Protobuf's int32 and enum: the low 32 bits of the varint (negative values are sign-extended to 10 bytes).
  int32_t int32() { return static_cast<int32_t>(static_cast<uint32_t>(varint())); }
  bool boolean() { return varint() != 0; }

 private:
  void need(std::size_t count, const char* what) const {
    if (end_ - at_ < count) fail(fmt::format("{} needs {} bytes but only {} remain", what, count, end_ - at_), at_);
  }

  std::size_t length_prefix() {
    const std::size_t start = at_;
    const uint64_t length = varint();
    if (length > end_ - at_)
      fail(fmt::format("a length of {} runs past the end ({} bytes remain)", length, end_ - at_), start);
    return static_cast<std::size_t>(length);
  }

  void skip_group(uint32_t field, int depth) {
    const std::size_t start = at_;
    if (depth >= 100) fail("groups are nested more than 100 deep", start);
    while (true) {
      if (at_end()) fail(fmt::format("the group of field {} has no end-group tag", field), start);
      const Tag inner = tag();
      if (inner.wire_type == kEndGroup) {
        if (inner.field != field)
          fail(fmt::format("an end-group tag for field {} closes the group of field {}", inner.field, field), start);
        return;
      }
      skip(inner, depth + 1);
    }
  }

  const std::string& path_;
  const std::string& bytes_;
  std::size_t at_;
  std::size_t end_;
  std::string message_;
};

// How to read one known field of a message; every other field is skipped.
struct FieldReader {
  uint32_t field;
  int wire_type;
  const char* name;
  std::function<void(WireReader&)> read;
};

void read_fields(WireReader& reader, const std::vector<FieldReader>& fields) {
  while (!reader.at_end()) {
    const Tag tag = reader.tag();
    auto known = std::find_if(fields.begin(), fields.end(), [&](const FieldReader& f) { return f.field == tag.field; });
    if (known == fields.end()) {
      reader.skip(tag);
      continue;
    }
    reader.expect(tag, known->wire_type, known->name);
    known->read(reader);
  }
}

int32_t read_piece_type(WireReader& reader) {
  const std::size_t start = reader.offset();
  const int32_t type = reader.int32();
  if (type < static_cast<int32_t>(PieceType::kNormal) || type > static_cast<int32_t>(PieceType::kByte))
    reader.fail(fmt::format("piece type {}, expected 1 (NORMAL) to 6 (BYTE)", type), start);
  return type;
}

void read_piece(WireReader reader, SentencePieceModel& model) {
  std::string piece;
  float score = 0;
  int32_t type = static_cast<int32_t>(PieceType::kNormal);
  read_fields(reader, {{1, kLengthDelimited, "piece", [&](WireReader& r) { piece = r.string(); }},
                       {2, kFixed32, "score", [&](WireReader& r) { score = r.fixed32_float(); }},
                       {3, kVarint, "type", [&](WireReader& r) { type = read_piece_type(r); }}});
  model.pieces.push_back(std::move(piece));
  model.scores.push_back(score);
  model.types.push_back(static_cast<PieceType>(type));
}

void read_trainer_spec(WireReader reader, SentencePieceModel& m) {
  read_fields(
      reader,
      {{3, kVarint, "model_type", [&](WireReader& r) { m.model_type = static_cast<ModelType>(r.int32()); }},
       {24, kVarint, "treat_whitespace_as_suffix", [&](WireReader& r) { m.treat_whitespace_as_suffix = r.boolean(); }},
       {35, kVarint, "byte_fallback", [&](WireReader& r) { m.byte_fallback = r.boolean(); }},
       {40, kVarint, "unk_id", [&](WireReader& r) { m.unk_id = r.int32(); }},
       {41, kVarint, "bos_id", [&](WireReader& r) { m.bos_id = r.int32(); }},
       {42, kVarint, "eos_id", [&](WireReader& r) { m.eos_id = r.int32(); }},
       {43, kVarint, "pad_id", [&](WireReader& r) { m.pad_id = r.int32(); }},
       {44, kLengthDelimited, "unk_surface", [&](WireReader& r) { m.unk_surface = r.string(); }}});
}

void read_normalizer_spec(WireReader reader, NormalizerSpec& spec) {
  read_fields(
      reader,
      {{1, kLengthDelimited, "name", [&](WireReader& r) { spec.name = r.string(); }},
       {2, kLengthDelimited, "precompiled_charsmap", [&](WireReader& r) { spec.precompiled_charsmap = r.string(); }},
       {3, kVarint, "add_dummy_prefix", [&](WireReader& r) { spec.add_dummy_prefix = r.boolean(); }},
       {4, kVarint, "remove_extra_whitespaces", [&](WireReader& r) { spec.remove_extra_whitespaces = r.boolean(); }},
       {5, kVarint, "escape_whitespaces", [&](WireReader& r) { spec.escape_whitespaces = r.boolean(); }}});
}

// A trainer_spec or normalizer_spec that occurs twice merges into one, as protobuf parsers do.
void read_model_proto(WireReader reader, SentencePieceModel& m) {
  read_fields(reader, {{1, kLengthDelimited, "pieces",
                        [&](WireReader& r) { read_piece(r.message(fmt::format("pieces[{}]", m.pieces.size())), m); }},
                       {2, kLengthDelimited, "trainer_spec",
                        [&](WireReader& r) { read_trainer_spec(r.message("trainer_spec"), m); }},
                       {3, kLengthDelimited, "normalizer_spec",
                        [&](WireReader& r) { read_normalizer_spec(r.message("normalizer_spec"), m.normalizer); }},
                       {5, kLengthDelimited, "denormalizer_spec",
                        [&](WireReader& r) { read_normalizer_spec(r.message("denormalizer_spec"), m.denormalizer); }}});
}

[[noreturn]] void invalid(const std::string& path, const std::string& what) {
  throw Error(fmt::format("{}: invalid SentencePiece .model: {}", path, what));
}

bool is_normal(PieceType type) {
  return type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
}

// SentencePiece's loader checks (model_interface.cc): non-empty pieces without NUL, no piece twice among the
// normal (NORMAL, USER_DEFINED, UNUSED) or among the reserved pieces, exactly one UNKNOWN piece, and with
// byte_fallback all 256 byte pieces.
void check_pieces(const std::string& path, const SentencePieceModel& model) {
  if (model.pieces.empty()) invalid(path, "it has no pieces (ModelProto field 1)");
  std::set<std::string> normal, reserved;
  std::set<int> bytes;
  int unknown = -1;
  for (std::size_t id = 0; id < model.pieces.size(); ++id) {
    const std::string& piece = model.pieces[id];
    const PieceType type = model.types[id];
    if (piece.empty()) invalid(path, fmt::format("piece {} is empty", id));
    if (piece.find('\0') != std::string::npos) invalid(path, fmt::format("piece {} contains a NUL byte", id));
    if (!(is_normal(type) ? normal : reserved).insert(piece).second)
      invalid(path, fmt::format("piece {} '{}' is defined twice", id, piece));
    if (type == PieceType::kUnknown) {
      if (unknown >= 0) invalid(path, fmt::format("pieces {} and {} are both of type UNKNOWN", unknown, id));
      unknown = static_cast<int>(id);
    }
    if (type == PieceType::kByte) {
      if (!model.byte_fallback)
        invalid(path, fmt::format("piece {} '{}' is a BYTE piece but trainer_spec.byte_fallback is false", id, piece));
      if (byte_of_piece(piece) < 0)
        invalid(path, fmt::format("BYTE piece {} is '{}', expected <0x00>..<0xFF>", id, piece));
      bytes.insert(byte_of_piece(piece));
    }
  }
  if (unknown < 0) invalid(path, "no piece has type UNKNOWN (<unk>)");
  if (model.unk_id != unknown)
    invalid(path, fmt::format("trainer_spec.unk_id is {} but the UNKNOWN piece is {}", model.unk_id, unknown));
  if (model.byte_fallback && bytes.size() != 256)
    invalid(path,
            fmt::format("trainer_spec.byte_fallback is true but only {} of the 256 byte pieces exist", bytes.size()));
}

void check_special_id(const std::string& path, const SentencePieceModel& model, int32_t id, const char* name) {
  if (id < -1 || id >= static_cast<int64_t>(model.pieces.size()))
    invalid(path,
            fmt::format("trainer_spec.{} is {}, expected -1 (none) or an id below {}", name, id, model.pieces.size()));
}

}  // namespace

SentencePieceModel read_sentencepiece_model(const std::string& path, const std::string& bytes) {
  SentencePieceModel model;
  read_model_proto(WireReader(path, bytes, 0, bytes.size(), "ModelProto"), model);
  check_pieces(path, model);
  check_special_id(path, model, model.bos_id, "bos_id");
  check_special_id(path, model, model.eos_id, "eos_id");
  check_special_id(path, model, model.pad_id, "pad_id");
  return model;
}

}  // namespace qforge::tok
