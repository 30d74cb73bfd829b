// safetensors checkpoints: round trips (single file and sharded, whole tensors and slices), an independent Python
// reader and writer as the reference, every kind of bad file, atomic writing, and the resident memory of a
// tensor-parallel rank reading its slice of a 249 MB checkpoint as 1, 2 and 4 MPI processes.
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "tests/test_support.h"
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <set>

namespace qforge::io {
namespace {

using test::CommandResult;
using test::quoted;
using test::run_command;
using test::slurp;
using test::write_bytes;
using test::files_in;

namespace fs = std::filesystem;
using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

const char* const kPython = "/usr/bin/python3";
const fs::path kReferenceScript = fs::path(__FILE__).parent_path() / "reference" / "read_safetensors.py";
// Python sums in numpy's pairwise order, libtorch in its own: the float64 sums may differ in the last bits.
constexpr double kSumRelativeTolerance = 1e-12;
constexpr double kMiB = 1024.0 * 1024.0;  // the "MB" of the memory report

torch::Tensor random_tensor(const std::vector<int64_t>& shape, torch::ScalarType dtype, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  return (torch::randn(shape, generator, torch::kFloat) * 3).to(dtype);
}

// A variety of dtypes and shapes, including a scalar, an empty tensor and fp32 special values.
Tensors sample_tensors() {
  torch::Tensor special = random_tensor({12, 7}, torch::kFloat, 1);
  special[0][0] = std::numeric_limits<float>::quiet_NaN();
  special[1][2] = -0.0f;
  special[5][6] = std::numeric_limits<float>::infinity();
  return {{"layers.0.attn.q.weight", special},
          {"layers.0.mlp.up.weight", random_tensor({9, 16}, torch::kHalf, 2)},
          {"layers.1.mlp.down.weight", random_tensor({16, 9}, torch::kBFloat16, 3)},
          {"rotary.cache", random_tensor({3, 5, 4}, torch::kFloat, 4)},
          {"norm.weight", random_tensor({33}, torch::kHalf, 5)},
          {"lm_head.bias", random_tensor({1, 1}, torch::kBFloat16, 6)},
          {"scale", random_tensor({}, torch::kFloat, 7)},
          {"unused", torch::empty({0, 4}, torch::kFloat)}};
}

// One tensor of every dtype the format has, finite values only (their sums are compared with Python's).
Tensors every_dtype_tensors() {
  torch::Tensor ints = torch::arange(-40, 40, torch::kLong).view({8, 10});
  return {{"f64", random_tensor({5, 6}, torch::kDouble, 11)},  {"f32", random_tensor({7, 3}, torch::kFloat, 12)},
          {"f16", random_tensor({4, 9}, torch::kHalf, 13)},    {"bf16", random_tensor({6, 6}, torch::kBFloat16, 14)},
          {"i64", ints * 1000003},                             {"i32", (ints * 7).to(torch::kInt)},
          {"i16", (ints * 3).to(torch::kShort)},               {"i8", ints.to(torch::kChar)},
          {"u8", (ints + 40).to(torch::kByte)},                {"bool", ints % 3 == 0},
          {"scalar", torch::tensor(2.25, torch::kFloat)}};
}

// Compares bit patterns, so that NaN equals NaN and -0.0 differs from 0.0.
torch::Tensor bits_of(const torch::Tensor& t) {
  switch (t.element_size()) {
    case 1: return t.contiguous().view(torch::kByte);
    case 2: return t.contiguous().view(torch::kShort);
    case 4: return t.contiguous().view(torch::kInt);
    default: return t.contiguous().view(torch::kLong);
  }
}

void expect_bitwise_equal(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_TRUE(actual.is_contiguous()) << what;
  EXPECT_TRUE(torch::equal(bits_of(actual), bits_of(expected))) << what << "\nactual:\n" << actual << "\nexpected:\n" << expected;
}

std::vector<std::string> sorted_names(const Tensors& tensors) {
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

// Whole tensors, conversions, and slices along dims 0, 1 and -1 against `narrow` of the originals.
void expect_reads_match(const Checkpoint& checkpoint, const Tensors& tensors) {
  EXPECT_EQ(checkpoint.names(), sorted_names(tensors));
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(checkpoint.contains(name));
    const TensorInfo& info = checkpoint.info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, t.scalar_type());
    EXPECT_EQ(info.shape, t.sizes().vec());
    EXPECT_EQ(info.nbytes, t.numel() * t.element_size());
    expect_bitwise_equal(checkpoint.read(name, t.scalar_type()), t, "whole, as stored");
    expect_bitwise_equal(checkpoint.read(name, torch::kFloat), t.to(torch::kFloat), "whole, converted to fp32");
    expect_bitwise_equal(checkpoint.read(name, torch::kHalf), t.to(torch::kHalf), "whole, converted to fp16");
    for (int64_t dim = 0; dim < std::min<int64_t>(t.dim(), 2); ++dim) {
      const int64_t extent = t.size(dim);
      const std::vector<std::pair<int64_t, int64_t>> ranges = {
          {0, -1}, {0, extent / 2}, {extent / 3, extent / 3 + 1}, {extent / 2, -1}, {extent - 1, 1}, {extent, 0}, {0, 0}};
      for (auto [start, length] : ranges) {
        const int64_t n = length == -1 ? extent - start : length;
        if (start < 0 || start + n > extent) continue;  // ranges that do not fit a short extent
        const std::string what = fmt::format("dim {} start {} length {}", dim, start, length);
        expect_bitwise_equal(checkpoint.read(name, t.scalar_type(), dim, start, length), t.narrow(dim, start, n), what);
        expect_bitwise_equal(checkpoint.read(name, torch::kFloat, dim, start, length),
                             t.narrow(dim, start, n).to(torch::kFloat), what + " as fp32");
      }
    }
    if (t.dim() >= 2 && t.size(-1) >= 2)
      expect_bitwise_equal(checkpoint.read(name, t.scalar_type(), -1, 1, 1), t.narrow(-1, 1, 1), "dim -1");
  }
}

// Restores the read chunk size when the test ends, failed or not.
class ReadChunkBytes {
 public:
  explicit ReadChunkBytes(int64_t bytes) : previous_(set_read_chunk_bytes(bytes)) {}
  ~ReadChunkBytes() { set_read_chunk_bytes(previous_); }

 private:
  int64_t previous_;
};

// A safetensors file by hand: the 8-byte little-endian length of `header`, `header`, `data_bytes` zero bytes.
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return bytes + header + std::string(data_bytes, '\0');
}

// A fresh directory per test and process, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() / fmt::format("qforge_safetensors_test_{}_{}", ::getpid(), counter++);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
};

// ---------------------------------------------------------------------------------------------------------------
// 1. Round trips

TEST_F(SafetensorsTest, SingleFileRoundTripIsBitExactForWholeTensorsSlicesAndConversions) {
  const Tensors tensors = sample_tensors();
  save_checkpoint(dir_.string(), tensors, 0, {{"producer", "test"}});
  EXPECT_EQ(files_in(dir_), std::set<std::string>{"model.safetensors"});

  SafetensorsFile file((dir_ / "model.safetensors").string());
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"producer", "test"}}));
  EXPECT_EQ(file.tensors().size(), tensors.size());
  // Data follow the header in the given order, 8-byte aligned.
  int64_t expected_offset = file.tensors().begin()->second.offset;
  for (const auto& [name, info] : file.tensors()) expected_offset = std::min(expected_offset, info.offset);
  EXPECT_EQ(expected_offset % 8, 0);
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(file.info(name).offset, expected_offset) << name;
    EXPECT_EQ(file.info(name).file, (dir_ / "model.safetensors").string());
    expected_offset += t.numel() * t.element_size();
  }
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(dir_ / "model.safetensors")), expected_offset);

  Checkpoint checkpoint(dir_.string());
  expect_reads_match(checkpoint, tensors);
  ReadChunkBytes tiny(24);  // every slice in many chunks, each smaller than a row of most tensors
  expect_reads_match(checkpoint, tensors);
}

TEST_F(SafetensorsTest, ShardedRoundTripSplitsInOrderAndIndexesEveryTensor) {
  const Tensors tensors = sample_tensors();
  int64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.numel() * t.element_size();
  const int64_t max_shard_bytes = 300;
  save_checkpoint(dir_.string(), tensors, max_shard_bytes);

  const nlohmann::json index = nlohmann::json::parse(slurp(dir_ / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  const nlohmann::json& weight_map = index["weight_map"];
  std::set<std::string> shards;
  for (const auto& [name, file] : weight_map.items()) shards.insert(file.get<std::string>());
  ASSERT_GE(shards.size(), 3u);
  std::set<std::string> expected_files = {"model.safetensors.index.json"};
  for (size_t i = 1; i <= shards.size(); ++i) expected_files.insert(fmt::format("model-{:05d}-of-{:05d}.safetensors", i, shards.size()));
  EXPECT_EQ(files_in(dir_), expected_files);
  EXPECT_EQ(weight_map.size(), tensors.size());

  // Tensors go into shards in the given order; a shard passes the limit only when it holds a single tensor.
  std::string previous_shard;
  for (const auto& [name, t] : tensors) {
    const std::string shard = weight_map[name].get<std::string>();
    EXPECT_GE(shard, previous_shard) << name;
    previous_shard = shard;
  }
  for (const std::string& shard : shards) {
    SafetensorsFile file((dir_ / shard).string());
    int64_t bytes = 0;
    for (const auto& [name, info] : file.tensors()) {
      bytes += info.nbytes;
      EXPECT_EQ(weight_map[name].get<std::string>(), shard) << name;
    }
    EXPECT_TRUE(bytes <= max_shard_bytes || file.tensors().size() == 1) << shard << " holds " << bytes << " bytes";
  }

  Checkpoint checkpoint(dir_.string());
  expect_reads_match(checkpoint, tensors);
  ReadChunkBytes tiny(24);
  expect_reads_match(checkpoint, tensors);
}

TEST_F(SafetensorsTest, EveryDtypeRoundTripsAndLayoutsReplaceEachOther) {
  const Tensors tensors = every_dtype_tensors();
  save_checkpoint(dir_.string(), tensors, 64);
  EXPECT_TRUE(fs::exists(dir_ / "model.safetensors.index.json"));
  for (const auto& [name, t] : tensors) expect_bitwise_equal(Checkpoint(dir_.string()).read(name, t.scalar_type()), t, name);

  // Saving again as a single file leaves no index behind that would describe other data.
  const Tensors replacement = {{"only", torch::arange(10, torch::kFloat)}};
  save_checkpoint(dir_.string(), replacement);
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
  EXPECT_EQ(Checkpoint(dir_.string()).names(), std::vector<std::string>{"only"});
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The independent Python reference


// Empty when the reference can run, else why not.
std::string python_unavailable() {
  if (::access(kPython, X_OK) != 0) return fmt::format("{} is not installed", kPython);
  if (run_command(fmt::format("{} -c 'import numpy'", kPython)).status != 0) return fmt::format("{} has no numpy", kPython);
  return "";
}

struct ReferenceEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  double sum = 0;
};

// Parses the script's NAME<TAB>DTYPE<TAB>D0,D1,...<TAB>SUM lines.
std::map<std::string, ReferenceEntry> parse_reference(const std::string& output) {
  std::map<std::string, ReferenceEntry> entries;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<std::string> fields;
    std::istringstream parts(line);
    std::string field;
    while (std::getline(parts, field, '\t')) fields.push_back(field);
    if (fields.size() != 4) {
      ADD_FAILURE() << "unexpected reference line: " << line;
      continue;
    }
    ReferenceEntry entry;
    entry.dtype = fields[1];
    std::istringstream dims(fields[2]);
    std::string dim;
    while (std::getline(dims, dim, ',')) entry.shape.push_back(std::stoll(dim));
    entry.sum = std::stod(fields[3]);
    entries[fields[0]] = entry;
  }
  return entries;
}

std::string expected_dtype_name(torch::ScalarType dtype) {
  static const std::map<torch::ScalarType, std::string> names = {
      {torch::kDouble, "F64"}, {torch::kFloat, "F32"}, {torch::kHalf, "F16"}, {torch::kBFloat16, "BF16"},
      {torch::kLong, "I64"},   {torch::kInt, "I32"},   {torch::kShort, "I16"}, {torch::kChar, "I8"},
      {torch::kByte, "U8"},    {torch::kBool, "BOOL"}};
  return names.at(dtype);
}

TEST_F(SafetensorsTest, PythonReferenceReadsWhatWeWrite) {
  const std::string why = python_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(fs::exists(kReferenceScript)) << kReferenceScript;

  Tensors tensors = every_dtype_tensors();
  Tensors samples = sample_tensors();
  for (size_t i = 1; i < 6; ++i) tensors.push_back(samples[i]);  // finite values only: not the NaN/inf tensor
  for (int64_t max_shard_bytes : {int64_t{0}, int64_t{200}}) {
    SCOPED_TRACE(fmt::format("max_shard_bytes {}", max_shard_bytes));
    const fs::path dir = dir_ / fmt::format("limit_{}", max_shard_bytes);
    save_checkpoint(dir.string(), tensors, max_shard_bytes);
    std::map<std::string, ReferenceEntry> reference;
    int files = 0;
    for (const std::string& name : files_in(dir)) {
      if (name.size() < 12 || name.substr(name.size() - 12) != ".safetensors") continue;
      ++files;
      CommandResult result = run_command(fmt::format("{} {} {}", kPython, quoted(kReferenceScript), quoted(dir / name)));
      ASSERT_EQ(result.status, 0) << result.output;
      for (auto& [tensor, entry] : parse_reference(result.output)) reference[tensor] = entry;
    }
    if (max_shard_bytes == 0)
      EXPECT_EQ(files, 1);
    else
      EXPECT_GE(files, 3);
    ASSERT_EQ(reference.size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      SCOPED_TRACE(name);
      ASSERT_EQ(reference.count(name), 1u);
      const ReferenceEntry& entry = reference[name];
      EXPECT_EQ(entry.dtype, expected_dtype_name(t.scalar_type()));
      EXPECT_EQ(entry.shape, t.sizes().vec());
      const double sum = t.to(torch::kDouble).sum().item<double>();
      const double scale = t.to(torch::kDouble).abs().sum().item<double>() + 1.0;
      EXPECT_NEAR(entry.sum, sum, kSumRelativeTolerance * scale);
    }
  }
}

TEST_F(SafetensorsTest, WeReadWhatThePythonReferenceWrites) {
  const std::string why = python_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  const fs::path path = dir_ / "python.safetensors";
  CommandResult result = run_command(fmt::format("{} {} --write {}", kPython, quoted(kReferenceScript), quoted(path)));
  ASSERT_EQ(result.status, 0) << result.output;

  SafetensorsFile file(path.string());
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"source", "read_safetensors.py"}}));
  EXPECT_EQ(file.tensors().size(), 6u);
  for (const char* name : {"a", "d", "f"}) EXPECT_NE(file.info(name).offset % 4, 0) << name << ": the script writes unaligned data";
  expect_bitwise_equal(file.read("a", torch::kFloat), torch::tensor({-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}).view({2, 3}), "a");
  expect_bitwise_equal(file.read("b", torch::kHalf), torch::tensor({1.0f, -2.0f, 0.5f, 65504.0f}).to(torch::kHalf), "b");
  expect_bitwise_equal(file.read("c", torch::kBFloat16),
                       torch::tensor({1.0f, -3.0f, 0.15625f, 256.0f}).view({2, 2}).to(torch::kBFloat16), "c");
  expect_bitwise_equal(file.read("d", torch::kLong), torch::tensor({int64_t{-5}, int64_t{0}, int64_t{1} << 40}), "d");
  expect_bitwise_equal(file.read("e", torch::kBool), torch::tensor({true, false, true}), "e");
  expect_bitwise_equal(file.read("f", torch::kDouble), torch::tensor(2.5, torch::kDouble), "f");
  // Sliced and converted: columns 1..2 of a, b widened to fp32, c's second row as fp32.
  expect_bitwise_equal(file.read("a", torch::kFloat, 1, 1, 2), torch::tensor({-0.5f, 0.0f, 1.0f, 1.5f}).view({2, 2}), "a[:, 1:3]");
  expect_bitwise_equal(file.read("b", torch::kFloat), torch::tensor({1.0f, -2.0f, 0.5f, 65504.0f}), "b as fp32");
  expect_bitwise_equal(file.read("c", torch::kFloat, 0, 1), torch::tensor({0.15625f, 256.0f}).view({1, 2}), "c[1:] as fp32");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Bad files: one qforge::Error each, naming the file, the tensor and what was wrong

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_mentions(const std::string& message, const std::vector<std::string>& parts) {
  ASSERT_FALSE(message.empty()) << "expected a qforge::Error";
  for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' missing from: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "expected one line: " << message;
}

TEST_F(SafetensorsTest, EveryKindOfBadFileIsAnErrorNamingFileAndProblem) {
  struct Case {
    std::string what;
    std::string bytes;
    std::vector<std::string> parts;
  };
  const std::string f32x4 = R"({"dtype": "F32", "shape": [4], "data_offsets": )";
  const std::vector<Case> cases = {
      {"empty", "", {"is empty", "expected an 8-byte header length"}},
      {"short", "abcde", {"is 5 bytes long", "8-byte header length"}},
      {"header_past_end", safetensors_bytes("{}", 10).replace(0, 8, std::string("\xe8\x03\0\0\0\0\0\0", 8)),
       {"header length of 1000 bytes", "past the end of the 20-byte file"}},
      {"huge_header_length", std::string(8, '\xff') + "{}", {"header length of 18446744073709551615 bytes"}},
      {"invalid_json", safetensors_bytes(R"({"w": {"dtype": )", 0), {"header that is not valid JSON"}},
      {"json_not_object", safetensors_bytes("[1, 2]", 0), {"JSON header of type array; expected an object"}},
      {"unknown_dtype", safetensors_bytes(R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 2),
       {"tensor 'w'", "unknown dtype \"F8_E4M3\"", "expected one of F64, F32, F16, BF16"}},
      {"shape_vs_offsets", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24),
       {"tensor 'w'", "[2, 3]", "spanning 20 bytes", "the shape needs 24 bytes"}},
      {"negative_extent", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0),
       {"tensor 'w'", "shape [-1]", "non-negative integers"}},
      {"missing_field", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1]}})", 4), {"tensor 'w'", "\"data_offsets\""}},
      {"reversed_offsets", safetensors_bytes(R"({"w": )" + f32x4 + "[16, 0]}}", 16), {"tensor 'w'", "0 <= begin <= end"}},
      {"truncated_data", safetensors_bytes(R"({"w": )" + f32x4 + "[0, 16]}}", 8),
       {"tensor 'w'", "past the end of its 8-byte data area", "is it truncated?"}},
      {"overlap", safetensors_bytes(R"({"a": )" + f32x4 + R"([0, 16]}, "b": )" + f32x4 + "[8, 24]}}", 24),
       {"tensors 'a'", "'b'", "overlap"}},
      {"metadata_not_string", safetensors_bytes(R"({"__metadata__": {"step": 3}})", 0), {"\"__metadata__\" value 3", "expected a string"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const fs::path path = dir_ / (c.what + ".safetensors");
    write_bytes(path, c.bytes);
    std::vector<std::string> parts = c.parts;
    parts.push_back("safetensors file '" + path.string() + "'");
    expect_mentions(error_of([&] { SafetensorsFile file(path.string()); }), parts);
    // The same through a checkpoint directory.
    const fs::path checkpoint = dir_ / ("checkpoint_" + c.what);
    fs::create_directories(checkpoint);
    write_bytes(checkpoint / "model.safetensors", c.bytes);
    expect_mentions(error_of([&] { Checkpoint ckpt(checkpoint.string()); }), {(checkpoint / "model.safetensors").string()});
  }
  expect_mentions(error_of([&] { SafetensorsFile file((dir_ / "absent.safetensors").string()); }),
                  {(dir_ / "absent.safetensors").string(), "cannot be opened", "No such file"});
}

TEST_F(SafetensorsTest, MissingTensorsAndBadSlicesAreErrorsNamingFileAndTensor) {
  save_checkpoint(dir_.string(), {{"w", torch::zeros({4, 6})}, {"s", torch::tensor(1.0f)}});
  const std::string path = (dir_ / "model.safetensors").string();
  SafetensorsFile file(path);
  expect_mentions(error_of([&] { file.info("nope"); }), {path, "has no tensor 'nope'"});
  expect_mentions(error_of([&] { file.read("nope", torch::kFloat); }), {path, "has no tensor 'nope'"});
  expect_mentions(error_of([&] { file.read("w", torch::kFloat, 2); }), {path, "tensor 'w' of shape [4, 6]", "along dim 2", "[-2, 1]"});
  expect_mentions(error_of([&] { file.read("w", torch::kFloat, 1, 4, 3); }), {path, "tensor 'w'", "[4, 7) along dim 1", "<= 6"});
  expect_mentions(error_of([&] { file.read("w", torch::kFloat, 0, 5); }), {path, "tensor 'w'", "<= 4"});
  expect_mentions(error_of([&] { file.read("w", torch::kFloat, 0, -1, 2); }), {path, "tensor 'w'"});
  expect_mentions(error_of([&] { file.read("s", torch::kFloat, 0, 0, 0); }), {path, "tensor 's'", "a scalar"});

  Checkpoint checkpoint(dir_.string());
  expect_mentions(error_of([&] { checkpoint.info("nope"); }), {dir_.string(), "has no tensor 'nope'", "model.safetensors"});
  expect_mentions(error_of([&] { checkpoint.read("nope", torch::kFloat); }), {dir_.string(), "has no tensor 'nope'"});
  EXPECT_FALSE(checkpoint.contains("nope"));

  const fs::path empty_dir = dir_ / "empty";
  fs::create_directories(empty_dir);
  expect_mentions(error_of([&] { Checkpoint c(empty_dir.string()); }), {empty_dir.string(), "holds neither model.safetensors"});
  expect_mentions(error_of([&] { Checkpoint c((dir_ / "absent").string()); }), {(dir_ / "absent").string(), "does not exist"});
}

TEST_F(SafetensorsTest, BadIndexesAreErrorsNamingDirectoryIndexShardAndTensor) {
  const Tensors tensors = {{"a", torch::ones({8})}, {"b", torch::ones({8})}, {"c", torch::ones({8})}};
  save_checkpoint(dir_.string(), tensors, 40);
  const fs::path index = dir_ / "model.safetensors.index.json";
  const std::string good_index = slurp(index);
  Checkpoint checkpoint(dir_.string());
  expect_mentions(error_of([&] { checkpoint.read("nope", torch::kFloat); }),
                  {dir_.string(), "has no tensor 'nope'", "index '" + index.string() + "'"});

  auto error_with_index = [&](const std::string& text) {
    write_bytes(index, text);
    return error_of([&] { Checkpoint c(dir_.string()); });
  };
  expect_mentions(error_with_index(R"({"weight_map": {"a": "model-00001-of-00003.safetensors", "z": "model-00009-of-00009.safetensors"}})"),
                  {index.string(), "tensor 'z'", "shard file 'model-00009-of-00009.safetensors'", "does not exist in '" + dir_.string() + "'"});
  expect_mentions(error_with_index(good_index.substr(0, good_index.size() / 2)), {index.string(), "is not valid JSON"});
  expect_mentions(error_with_index(R"({"metadata": {}})"), {index.string(), "no \"weight_map\""});
  expect_mentions(error_with_index(R"({"weight_map": {"a": 7}})"), {index.string(), "tensor 'a'", "expected a file name"});
  expect_mentions(error_with_index(R"({"weight_map": {"c": "model-00001-of-00003.safetensors"}})"),
                  {index.string(), "tensor 'c'", "model-00001-of-00003.safetensors", "has no such tensor"});
  // A corrupt shard: its own error, and which index it belongs to.
  write_bytes(index, good_index);
  write_bytes(dir_ / "model-00002-of-00003.safetensors", "short");
  expect_mentions(error_of([&] { Checkpoint c(dir_.string()); }),
                  {(dir_ / "model-00002-of-00003.safetensors").string(), "5 bytes", "a shard of checkpoint index '" + index.string() + "'"});
}

TEST_F(SafetensorsTest, TensorsThatCannotBeSavedAreErrorsNamingTheTensor) {
  const std::string dir = (dir_ / "out").string();
  expect_mentions(error_of([&] { save_checkpoint(dir, {{"c", torch::zeros({2}, torch::kComplexFloat)}}); }),
                  {"tensor 'c'", dir, "ComplexFloat", "no safetensors name"});
  expect_mentions(error_of([&] { save_checkpoint(dir, {{"x", torch::zeros({2})}, {"x", torch::ones({2})}}); }),
                  {"tensor 'x'", "given twice"});
  expect_mentions(error_of([&] { save_checkpoint(dir, {{"__metadata__", torch::zeros({2})}}); }), {"__metadata__"});
  expect_mentions(error_of([&] { save_checkpoint(dir, {{"u", torch::Tensor()}}); }), {"tensor 'u'", "undefined"});
  EXPECT_FALSE(fs::exists(dir)) << "nothing is created for tensors that cannot be saved";
  // Non-contiguous tensors are saved as their values.
  torch::Tensor transposed = torch::arange(12, torch::kFloat).view({3, 4}).t();
  save_checkpoint(dir, {{"t", transposed}});
  expect_bitwise_equal(Checkpoint(dir).read("t", torch::kFloat), transposed.contiguous(), "transposed");
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Atomic writing

bool looks_temporary(const std::string& name) { return name.rfind('.', 0) == 0 || name.find(".tmp") != std::string::npos; }

TEST_F(SafetensorsTest, SavingLeavesNoTemporaryFiles) {
  const Tensors tensors = sample_tensors();
  for (int64_t max_shard_bytes : {int64_t{0}, int64_t{300}}) {
    const fs::path dir = dir_ / fmt::format("limit_{}", max_shard_bytes);
    save_checkpoint(dir.string(), tensors, max_shard_bytes);
    const std::regex final_name(R"(model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors)");
    for (const std::string& name : files_in(dir)) {
      EXPECT_FALSE(looks_temporary(name)) << name;
      EXPECT_TRUE(std::regex_match(name, final_name)) << name;
    }
    // Overwriting an existing checkpoint also leaves none.
    save_checkpoint(dir.string(), tensors, max_shard_bytes);
    for (const std::string& name : files_in(dir)) EXPECT_FALSE(looks_temporary(name)) << name;
    expect_reads_match(Checkpoint(dir.string()), tensors);
  }
}

TEST_F(SafetensorsTest, UnwritableDirectoryFailsWithoutCreatingFiles) {
  const fs::path blocker = dir_ / "a_file";
  write_bytes(blocker, "not a directory");
  const fs::path dir = blocker / "checkpoint";
  expect_mentions(error_of([&] { save_checkpoint(dir.string(), sample_tensors()); }),
                  {"cannot create the checkpoint directory", dir.string()});
  EXPECT_EQ(files_in(dir_), std::set<std::string>{"a_file"});
}

// Makes writes past `bytes` fail with EFBIG (instead of raising SIGXFSZ) until destroyed.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &previous_limit_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = previous_limit_;
    limit.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &limit) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &previous_limit_);
    std::signal(SIGXFSZ, previous_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit previous_limit_{};
  void (*previous_handler_)(int) = nullptr;
  bool ok_ = false;
};

TEST_F(SafetensorsTest, AFailureHalfwayLeavesThePreviousCheckpointAndNoNewFile) {
  const Tensors previous = {{"old", torch::full({4}, 7.0f)}};
  save_checkpoint(dir_.string(), previous);
  // Shards: [a, b] (32 KiB), [big] (256 KiB), [c]; files may not pass 100 KiB, so the second shard fails halfway
  // through its data after the first was written in full.
  const Tensors tensors = {{"a", random_tensor({4096}, torch::kFloat, 21)},
                           {"b", random_tensor({4096}, torch::kFloat, 22)},
                           {"big", random_tensor({65536}, torch::kFloat, 23)},
                           {"c", random_tensor({4096}, torch::kFloat, 24)}};
  std::string message;
  {
    FileSizeLimit limit(100 * 1024);
    ASSERT_TRUE(limit.ok());
    message = error_of([&] { save_checkpoint(dir_.string(), tensors, 40 * 1024); });
  }
  expect_mentions(message, {"writing '", "model-00002-of-00003.safetensors", "File too large"});
  EXPECT_EQ(files_in(dir_), std::set<std::string>{"model.safetensors"}) << "only the previous checkpoint";
  Checkpoint checkpoint(dir_.string());
  EXPECT_EQ(checkpoint.names(), std::vector<std::string>{"old"});
  expect_bitwise_equal(checkpoint.read("old", torch::kFloat), previous[0].second, "previous checkpoint");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Resident memory of a tensor-parallel rank reading its slice

// A value from /proc/self/status, in bytes ("VmRSS", "VmHWM"); -1 when absent.
int64_t status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;  // "VmRSS:  123 kB"
  return -1;
}

// Resets VmHWM to the current VmRSS; false where the kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

struct ParallelWeight {
  std::string name;
  std::vector<int64_t> shape;
  int split_dim;  // 0: column-parallel (output features), 1: row-parallel (input features), -1: replicated
};

// A LLaMA-like stack of Megatron layers: 249 MB (237.5 MiB) of fp32.
std::vector<ParallelWeight> parallel_weights() {
  std::vector<ParallelWeight> weights = {{"model.embed_tokens.weight", {6144, 800}, 0}};
  for (int layer = 0; layer < 4; ++layer) {
    const std::string prefix = fmt::format("model.layers.{}.", layer);
    weights.push_back({prefix + "self_attn.qkv_proj.weight", {4096, 800}, 0});
    weights.push_back({prefix + "self_attn.o_proj.weight", {4096, 800}, 1});
    weights.push_back({prefix + "mlp.up_proj.weight", {4096, 800}, 0});
    weights.push_back({prefix + "mlp.down_proj.weight", {4096, 800}, 1});
    weights.push_back({prefix + "input_layernorm.weight", {800}, -1});
  }
  weights.push_back({"model.norm.weight", {800}, -1});
  weights.push_back({"lm_head.weight", {6144, 800}, 0});
  return weights;
}

torch::Tensor parallel_weight_values(size_t i, const ParallelWeight& w) { return random_tensor(w.shape, torch::kFloat, 1000 + i); }

TEST(SafetensorsMemory, TensorParallelSliceReadsKeepPeakRssNearTheShard) {
  dist::Communicator& world = dist::Runtime::current()->world();
  const int tp = world.size();
  const int rank = world.rank();
  torch::Tensor pid = torch::tensor({static_cast<int64_t>(::getpid())});
  world.broadcast(pid, 0);
  const fs::path dir = fs::temp_directory_path() / fmt::format("qforge_safetensors_tp_{}", pid.item<int64_t>());
  const std::vector<ParallelWeight> weights = parallel_weights();

  int64_t checkpoint_bytes = 0, largest_bytes = 0;
  for (const ParallelWeight& w : weights) {
    int64_t bytes = 4;
    for (int64_t extent : w.shape) bytes *= extent;
    checkpoint_bytes += bytes;
    largest_bytes = std::max(largest_bytes, bytes);
  }
  ASSERT_GE(checkpoint_bytes, 200'000'000);

  torch::Tensor written = torch::zeros({1}, torch::kInt);
  if (rank == 0) {
    const std::string error = error_of([&] {
      Tensors tensors;
      for (size_t i = 0; i < weights.size(); ++i) tensors.emplace_back(weights[i].name, parallel_weight_values(i, weights[i]));
      save_checkpoint(dir.string(), tensors, 100'000'000);  // three shards, as a real checkpoint would be
    });
    EXPECT_EQ(error, "");
    written.fill_(error.empty() ? 1 : 0);
  }
  world.barrier();
  world.broadcast(written, 0);
  EXPECT_EQ(written.item<int>(), 1) << "rank 0 could not write the checkpoint";

  int64_t shard_bytes = 0, increase = 0;
  std::vector<torch::Tensor> slices;  // kept alive, as a model keeps its weights
  if (written.item<int>() == 1) {
    // Rank 0's freed weights may stay resident in malloc's heap and be reused for the slices, which would hide
    // them from the measurement: give them back to the system first.
    ::malloc_trim(0);
    if (!reset_peak_rss()) {
      world.barrier();
      if (rank == 0) fs::remove_all(dir);
      GTEST_SKIP() << "/proc/self/clear_refs cannot reset the peak RSS here";
    }
    const int64_t baseline = status_bytes("VmRSS");
    const std::string error = error_of([&] {
      Checkpoint checkpoint(dir.string());
      for (const ParallelWeight& w : weights) {
        if (w.split_dim < 0) {
          slices.push_back(checkpoint.read(w.name, torch::kFloat));
        } else {
          const int64_t part = w.shape[w.split_dim] / tp;
          slices.push_back(checkpoint.read(w.name, torch::kFloat, w.split_dim, rank * part, part));
        }
        shard_bytes += slices.back().numel() * 4;
      }
    });
    increase = status_bytes("VmHWM") - baseline;
    EXPECT_EQ(error, "");
    EXPECT_GE(baseline, 0);

    // The slices are the right parts of the weights (checked after the measurement: it needs the full tensors).
    // No ASSERT before the collectives below: every rank must reach them.
    for (size_t i : {size_t{1}, size_t{2}, weights.size() - 1}) {
      if (i >= slices.size()) break;
      const ParallelWeight& w = weights[i];
      const int64_t part = w.shape[w.split_dim] / tp;
      expect_bitwise_equal(slices[i], parallel_weight_values(i, w).narrow(w.split_dim, rank * part, part), w.name);
    }
  }

  torch::Tensor worst = torch::tensor({static_cast<double>(increase)}, torch::kDouble);
  world.all_reduce(worst, dist::ReduceOp::kMax);
  if (rank == 0)
    std::printf("safetensors TP=%d: checkpoint %.1f MB, shard %.1f MB, peak RSS increase %.1f MB\n", tp,
                checkpoint_bytes / kMiB, shard_bytes / kMiB, worst.item<double>() / kMiB);
  const int64_t allowed = shard_bytes + largest_bytes + 16 * (1 << 20);
  EXPECT_LE(increase, allowed) << fmt::format("rank {}: shard {:.1f} MB, largest tensor {:.1f} MB", rank,
                                               shard_bytes / kMiB, largest_bytes / kMiB);
  EXPECT_GE(increase, shard_bytes) << "the slices themselves are resident";

  world.barrier();
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace qforge::io
