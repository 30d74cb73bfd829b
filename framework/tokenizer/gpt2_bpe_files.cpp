// GPT-2 byte-level BPE files: vocab.json + merges.txt (OpenAI's encoder.json + vocab.bpe, Hugging Face's
// GPT2Tokenizer and OPT's checkpoints) and Hugging Face's tokenizer.json with a BPE model and the ByteLevel
// pre-tokenizer. Everything is checked here, so that a bad file is a qforge::Error naming it (and the line of
// merges.txt), never a crash later.
#include <fmt/format.h>

#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "framework/common/error.h"
#include "framework/tokenizer/gpt2_bpe.h"

namespace qforge::tok {
namespace {

using json = nlohmann::json;

// Ids past this are not a vocabulary but a mistake (pieces are stored by id).
constexpr int64_t kMaxId = 1 << 24;

json parse_json(const std::string& path, const std::string& bytes, const char* expected) {
  if (bytes.find_first_not_of(" \t\r\n") == std::string::npos)
    throw Error(fmt::format("{}: the file is empty, expected {}", path, expected));
  try {
    return json::parse(bytes);
  } catch (const json::parse_error& e) {
    throw Error(fmt::format("{}: not valid JSON, expected {} ({})", path, expected, e.what()));
  }
}

// `where` is "" for a vocab.json, "model.vocab" in a tokenizer.json.
PieceIds read_vocab(const std::string& path, const json& vocab, const char* where) {
  const std::string name = *where ? fmt::format("{} in {}", where, path) : path;
  if (!vocab.is_object() || vocab.empty())
    throw Error(fmt::format("{}: expected a JSON object of tokens and their ids (\"Ġthe\": 262), found {}", name,
                            vocab.is_object() ? "an empty object" : vocab.type_name()));
  PieceIds ids;
  std::unordered_map<int32_t, const std::string*> token_of;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxId)
      throw Error(fmt::format("{}: token \"{}\" has id {}, expected an integer from 0 to {}", name, token, id.dump(),
                              kMaxId - 1));
    const auto value = static_cast<int32_t>(id.get<int64_t>());
    auto [at, fresh] = ids.emplace(token, value);
    if (!token_of.emplace(value, &at->first).second)
      throw Error(fmt::format("{}: id {} is given to both \"{}\" and \"{}\"", name, value, *token_of[value], token));
  }
  return ids;
}

// Every merge's two tokens and their concatenation must be tokens; `locate(i)` names merge i in errors.
void check_merges(const Gpt2BpeModel& model, const std::function<std::string(std::size_t)>& locate) {
  for (std::size_t i = 0; i < model.merges.size(); ++i) {
    const auto& [left, right] = model.merges[i];
    for (const std::string& token : {left, right, left + right})
      if (model.vocab.count(token) == 0)
        throw Error(fmt::format("{}: the merge \"{} {}\" needs the token \"{}\", which is not in the vocabulary of {}",
                                locate(i), left, right, token, model.path));
  }
}

// merges.txt: an optional first line "#version: 0.2", then "A B" a line; blank lines are skipped.
void read_merges_txt(const std::string& path, const std::string& bytes, Gpt2BpeModel& model,
                     std::vector<std::size_t>& lines) {
  if (bytes.empty())
    throw Error(fmt::format("{}: the file is empty, expected merges.txt's \"#version\" line and its BPE merges", path));
  std::size_t line_number = 0;
  for (std::size_t at = 0; at < bytes.size();) {
    std::size_t end = bytes.find('\n', at);
    if (end == std::string::npos) end = bytes.size();
    std::string_view line(bytes.data() + at, end - at);
    at = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
    const std::size_t space = line.find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      throw Error(fmt::format("{}:{}: expected a merge \"A B\" (two tokens and one space), found \"{}\"", path,
                              line_number, line));
    model.merges.emplace_back(std::string(line.substr(0, space)), std::string(line.substr(space + 1)));
    lines.push_back(line_number);
  }
}

bool is_off(const json& value) {
  return value.is_null() || (value.is_string() && value.get<std::string>().empty()) ||
         (value.is_number() && value.get<double>() == 0.0) || (value.is_boolean() && !value.get<bool>());
}

std::string type_of(const json& object) {
  return object.is_object() && object.contains("type") ? object["type"].dump() : object.dump();
}

void read_pre_tokenizer(const std::string& path, const json& root, Gpt2BpeModel& model) {
  const json pre = root.value("pre_tokenizer", json());
  if (!pre.is_object() || pre.value("type", "") != "ByteLevel")
    throw Error(
        fmt::format("{}: pre_tokenizer {} is not supported; expected \"ByteLevel\" (GPT-2's byte-level "
                    "BPE, as GPT-2's and OPT's tokenizer.json; SentencePiece models load from tokenizer.model)",
                    path, pre.is_null() ? "null" : type_of(pre)));
  model.add_prefix_space = pre.value("add_prefix_space", false);
  model.use_regex = pre.value("use_regex", true);
  const json normalizer = root.value("normalizer", json());
  if (!normalizer.is_null())
    throw Error(fmt::format("{}: normalizer {} is not supported; expected null (GPT-2's byte-level BPE has none)", path,
                            type_of(normalizer)));
}

void read_model(const std::string& path, const json& bpe, Gpt2BpeModel& model) {
  if (!bpe.is_object()) throw Error(fmt::format("{}: \"model\" is not an object, expected the BPE model", path));
  if (bpe.contains("type") && bpe["type"] != "BPE")
    throw Error(fmt::format("{}: model.type {} is not supported; expected \"BPE\" (GPT-2's byte-level BPE)", path,
                            bpe["type"].dump()));
  for (const char* option : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"})
    if (bpe.contains(option) && !is_off(bpe[option]))
      throw Error(fmt::format("{}: model.{} {} is not supported (GPT-2's byte-level BPE has none)", path, option,
                              bpe[option].dump()));
  model.vocab = read_vocab(path, bpe.value("vocab", json()), "model.vocab");
  if (bpe.contains("unk_token") && bpe["unk_token"].is_string()) model.unk_token = bpe["unk_token"];
  model.ignore_merges = bpe.value("ignore_merges", false);
  const json merges = bpe.value("merges", json());
  if (!merges.is_array()) throw Error(fmt::format("{}: model.merges is missing or not an array", path));
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const json& merge = merges[i];
    if (merge.is_string()) {  // "A B"
      const std::string text = merge;
      const std::size_t space = text.find(' ');
      if (space != 0 && space != std::string::npos && space + 1 < text.size() &&
          text.find(' ', space + 1) == std::string::npos) {
        model.merges.emplace_back(text.substr(0, space), text.substr(space + 1));
        continue;
      }
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string() &&
               !merge[0].get<std::string>().empty() && !merge[1].get<std::string>().empty()) {  // ["A", "B"]
      model.merges.emplace_back(merge[0], merge[1]);
      continue;
    }
    throw Error(fmt::format("{}: model.merges[{}] is {}, expected \"A B\" or [\"A\", \"B\"]", path, i, merge.dump()));
  }
}

void read_added_tokens(const std::string& path, const json& root, Gpt2BpeModel& model) {
  const json added = root.value("added_tokens", json::array());
  if (!added.is_array()) throw Error(fmt::format("{}: added_tokens is not an array", path));
  for (std::size_t i = 0; i < added.size(); ++i) {
    const json& token = added[i];
    if (!token.is_object() || !token.contains("id") || !token["id"].is_number_integer() || token["id"] < 0 ||
        token["id"] >= kMaxId || !token.contains("content") || !token["content"].is_string() ||
        token["content"].get<std::string>().empty())
      throw Error(
          fmt::format("{}: added_tokens[{}] is {}, expected an object with an \"id\" from 0 to {} and a "
                      "non-empty \"content\"",
                      path, i, token.dump(), kMaxId - 1));
    model.added.push_back({token["content"], token["id"].get<int32_t>(), token.value("special", false),
                           token.value("lstrip", false), token.value("rstrip", false)});
  }
}

std::unique_ptr<Tokenizer> from_tokenizer_json(const std::string& path, const json& root) {
  Gpt2BpeModel model;
  model.path = path;
  model.tokenizer_json = true;
  try {
    read_model(path, root["model"], model);
    read_pre_tokenizer(path, root, model);
    read_added_tokens(path, root, model);
  } catch (const json::exception& e) {  // a value of the wrong type
    throw Error(fmt::format("{}: unexpected tokenizer.json contents ({})", path, e.what()));
  }
  check_merges(model, [&](std::size_t i) { return fmt::format("{}: model.merges[{}]", path, i); });
  return make_gpt2_tokenizer(std::move(model));
}

std::unique_ptr<Tokenizer> from_vocab_and_merges(const std::string& vocab_path, const json& vocab,
                                                 const std::string& merges_path) {
  Gpt2BpeModel model;
  model.path = vocab_path;
  model.vocab = read_vocab(vocab_path, vocab, "");
  std::vector<std::size_t> lines;
  read_merges_txt(merges_path, read_tokenizer_file(merges_path), model, lines);
  check_merges(model, [&](std::size_t i) { return fmt::format("{}:{}", merges_path, lines[i]); });
  return make_gpt2_tokenizer(std::move(model));
}

constexpr const char* kVocabExpected = "a vocab.json (a JSON object of tokens and their ids)";

}  // namespace

std::unique_ptr<Tokenizer> gpt2_tokenizer_from_files(const std::string& vocab_path, const std::string& merges_path) {
  return from_vocab_and_merges(vocab_path, parse_json(vocab_path, read_tokenizer_file(vocab_path), kVocabExpected),
                               merges_path);
}

std::unique_ptr<Tokenizer> gpt2_tokenizer_from_json_file(const std::string& path) {
  const json root = parse_json(path, read_tokenizer_file(path), "a Hugging Face tokenizer.json or a GPT-2 vocab.json");
  // A vocab.json maps tokens to integers (GPT-2's has a token "model"); a tokenizer.json's "model" is an object.
  if (root.is_object() && root.contains("model") && !root["model"].is_number()) return from_tokenizer_json(path, root);
  const std::string merges = (std::filesystem::path(path).parent_path() / "merges.txt").string();
  if (!std::filesystem::exists(merges))
    throw Error(
        fmt::format("{}: a GPT-2 vocab.json needs merges.txt beside it, and {} is absent (or give a Hugging "
                    "Face tokenizer.json, which has a \"model\")",
                    path, merges));
  return from_vocab_and_merges(path, root, merges);
}

}  // namespace qforge::tok
