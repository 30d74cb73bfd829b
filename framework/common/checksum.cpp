#include "framework/common/checksum.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace qforge {
namespace {

constexpr uint64_t kPrime1 = 11400714785074694791ULL;
constexpr uint64_t kPrime2 = 14029467366897019727ULL;
constexpr uint64_t kPrime3 = 1609587929392839161ULL;
constexpr uint64_t kPrime4 = 9650029242287828579ULL;
constexpr uint64_t kPrime5 = 2870177450012600261ULL;
constexpr size_t kFileChunk = size_t{4} << 20;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t read64(const unsigned char* p) {  // little-endian, whatever the host
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = value << 8 | p[i];
  return value;
}

uint32_t read32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

uint64_t lane_round(uint64_t lane, uint64_t input) { return rotl(lane + input * kPrime2, 31) * kPrime1; }

uint64_t merge(uint64_t hash, uint64_t lane) { return (hash ^ lane_round(0, lane)) * kPrime1 + kPrime4; }

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

uint64_t fnv1a64(std::string_view bytes, uint64_t hash) {
  for (const char c : bytes) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return hash;
}

Xxh64::Xxh64(uint64_t seed)
    : seed_(seed), lanes_{seed + kPrime1 + kPrime2, seed + kPrime2, seed, seed - kPrime1}, buffer_{} {}

void Xxh64::update(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* const end = p + size;
  total_ += size;
  if (buffered_ + size < 32) {
    if (size > 0) std::memcpy(buffer_ + buffered_, p, size);
    buffered_ += size;
    return;
  }
  if (buffered_ > 0) {
    const size_t fill = 32 - buffered_;
    std::memcpy(buffer_ + buffered_, p, fill);
    p += fill;
    for (int i = 0; i < 4; ++i) lanes_[i] = lane_round(lanes_[i], read64(buffer_ + 8 * i));
    buffered_ = 0;
  }
  uint64_t v1 = lanes_[0], v2 = lanes_[1], v3 = lanes_[2], v4 = lanes_[3];
  for (; p + 32 <= end; p += 32) {
    v1 = lane_round(v1, read64(p));
    v2 = lane_round(v2, read64(p + 8));
    v3 = lane_round(v3, read64(p + 16));
    v4 = lane_round(v4, read64(p + 24));
  }
  lanes_[0] = v1, lanes_[1] = v2, lanes_[2] = v3, lanes_[3] = v4;
  buffered_ = static_cast<size_t>(end - p);
  if (buffered_ > 0) std::memcpy(buffer_, p, buffered_);
}

uint64_t Xxh64::digest() const {
  uint64_t hash;
  if (total_ >= 32) {
    hash = rotl(lanes_[0], 1) + rotl(lanes_[1], 7) + rotl(lanes_[2], 12) + rotl(lanes_[3], 18);
    for (uint64_t lane : lanes_) hash = merge(hash, lane);
  } else {
    hash = seed_ + kPrime5;
  }
  hash += total_;
  const unsigned char* p = buffer_;
  const unsigned char* const end = buffer_ + buffered_;
  for (; p + 8 <= end; p += 8) hash = rotl(hash ^ lane_round(0, read64(p)), 27) * kPrime1 + kPrime4;
  if (p + 4 <= end) {
    hash = rotl(hash ^ (uint64_t{read32(p)} * kPrime1), 23) * kPrime2 + kPrime3;
    p += 4;
  }
  for (; p < end; ++p) hash = rotl(hash ^ (uint64_t{*p} * kPrime5), 11) * kPrime1;
  hash ^= hash >> 33;
  hash *= kPrime2;
  hash ^= hash >> 29;
  hash *= kPrime3;
  hash ^= hash >> 32;
  return hash;
}

uint64_t xxh64(const void* data, size_t size, uint64_t seed) {
  Xxh64 state(seed);
  state.update(data, size);
  return state.digest();
}

std::string hex64(uint64_t value) { return fmt::format("{:016x}", value); }

FileChecksum checksum_file(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(fmt::format("cannot open '{}' to check it: {}", path, std::strerror(errno)));
  std::vector<unsigned char> chunk(kFileChunk);
  Xxh64 state;
  FileChecksum result;
  for (;;) {
    const size_t got = std::fread(chunk.data(), 1, chunk.size(), file.get());
    state.update(chunk.data(), got);
    result.bytes += static_cast<int64_t>(got);
    if (got < chunk.size()) break;
  }
  if (std::ferror(file.get())) throw Error(fmt::format("reading '{}' failed: {}", path, std::strerror(errno)));
  result.xxh64 = state.digest();
  return result;
}

}  // namespace qforge
