// Reads the NumPy .npy files of the golden references: little-endian f4, f8, i4 or i8 in C order.
#pragma once

#include <torch/torch.h>

#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qforge::test {

// The array in `path` as a tensor of its dtype (kFloat, kDouble, kInt, kLong). Throws std::runtime_error naming
// the file for anything else: another dtype or byte order, a Fortran-order array, a short or malformed file.
inline torch::Tensor read_npy(const std::filesystem::path& path) {
  const auto fail = [&](const std::string& why) {
    return std::runtime_error("read_npy " + path.string() + ": " + why);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail("cannot open");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw fail("not a .npy file");
  uint32_t header_length = 0;
  unsigned char length_bytes[4] = {0, 0, 0, 0};
  const int length_size = magic[6] == 1 ? 2 : 4;  // version 1: 2-byte length; 2 and 3: 4-byte
  if (!in.read(reinterpret_cast<char*>(length_bytes), length_size)) throw fail("truncated header");
  for (int i = length_size - 1; i >= 0; --i) header_length = header_length << 8 | length_bytes[i];
  std::string header(header_length, '\0');
  if (!in.read(header.data(), header_length)) throw fail("truncated header");

  const auto value_of = [&](const std::string& key) {
    const size_t at = header.find("'" + key + "':");
    if (at == std::string::npos) throw fail("header has no '" + key + "': " + header);
    return header.substr(at + key.size() + 3);
  };
  const std::string descr = value_of("descr");
  torch::ScalarType dtype;
  if (descr.rfind(" '<f4'", 0) == 0) dtype = torch::kFloat;
  else if (descr.rfind(" '<f8'", 0) == 0) dtype = torch::kDouble;
  else if (descr.rfind(" '<i4'", 0) == 0) dtype = torch::kInt;
  else if (descr.rfind(" '<i8'", 0) == 0) dtype = torch::kLong;
  else throw fail("unsupported dtype " + descr.substr(0, descr.find(',')) + " (little-endian f4, f8, i4, i8 only)");
  if (value_of("fortran_order").rfind(" False", 0) != 0) throw fail("Fortran-order arrays are not supported");

  const std::string shape_text = value_of("shape");
  std::vector<int64_t> shape;
  for (size_t i = shape_text.find('(') + 1; i < shape_text.size() && shape_text[i] != ')';) {
    if (std::isdigit(static_cast<unsigned char>(shape_text[i]))) {
      size_t used = 0;
      shape.push_back(std::stoll(shape_text.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }
  torch::Tensor tensor = torch::empty(shape, dtype);
  const auto bytes = static_cast<std::streamsize>(tensor.numel() * tensor.element_size());
  if (!in.read(static_cast<char*>(tensor.data_ptr()), bytes)) throw fail("shorter than its shape says");
  return tensor;
}

}  // namespace qforge::test
