// Checksums, written once for the whole framework: FNV-1a for short keys and fingerprints (stable values that
// corpora and checkpoints record), XXH64 for files (streamed in chunks at memory speed, so a file of any size is
// checked without holding it in memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qforge {

// Not FNV's published offset basis (14695981039346656037): the digits qforge has always used, kept because corpora
// record checkpoint fingerprints made with it and random initialisations are seeded by it.
constexpr uint64_t kFnv1aOffset = 1469598103934665603ULL;

// 64-bit FNV-1a of `bytes`, continuing from `hash` (kFnv1aOffset to start). One signature only: a (pointer, size)
// overload would take fnv1a64("text", hash) for a pointer and a length.
uint64_t fnv1a64(std::string_view bytes, uint64_t hash = kFnv1aOffset);

// XXH64 (Yann Collet's xxHash, 64-bit; the digest zstd frames check), fed in pieces of any size: the digest
// does not depend on how the bytes were split.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  uint64_t seed_;
  uint64_t lanes_[4];
  unsigned char buffer_[32];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

// 16 lowercase hex digits.
std::string hex64(uint64_t value);

struct FileChecksum {
  int64_t bytes = 0;
  uint64_t xxh64 = 0;
};

// Size and XXH64 of the file at `path`, read in chunks of 4 MiB. Throws qforge::Error naming the file when it
// cannot be opened or read.
FileChecksum checksum_file(const std::string& path);

}  // namespace qforge
