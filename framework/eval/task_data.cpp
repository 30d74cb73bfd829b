#include "framework/eval/task_data.h"

#include "framework/common/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace qforge::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string a_type(const json& value) {  // "an object", "a number", ...
  const std::string name = value.type_name();
  return (name == "object" || name == "array" ? "an " : name == "null" ? "" : "a ") + name;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in || fs::is_directory(path)) throw Error(fmt::format("{}: cannot open the task data file", path));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The text's lines without their LF or CRLF; a final line end does not start another line.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

// `where` names the place in the file: "line 3" or "item 2".
std::string string_field(const json& object, const char* key, const std::string& path, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end() || !found->is_string())
    throw Error(fmt::format("{}: {}: expected a string field \"{}\"{}", path, where, key,
                            found == object.end() ? "" : ", found " + a_type(*found)));
  return found->get<std::string>();
}

// One JSON Lines object per line.
std::vector<json> read_json_lines(const std::string& path) {
  std::vector<json> objects;
  const std::vector<std::string> lines = split_lines(read_file(path));
  for (std::size_t i = 0; i < lines.size(); ++i) {
    json object;
    try {
      object = json::parse(lines[i]);
    } catch (const json::exception& e) {
      throw Error(
          fmt::format("{}: line {}: expected a JSON object, found text that is not JSON ({})", path, i + 1, e.what()));
    }
    if (!object.is_object())
      throw Error(fmt::format("{}: line {}: expected a JSON object, found {}", path, i + 1, a_type(object)));
    objects.push_back(std::move(object));
  }
  if (objects.empty()) throw Error(fmt::format("{}: holds no items (one JSON object per line)", path));
  return objects;
}

// "Answer1: a Answer2: b Answer3: c" (marker "Answer") → {"a", "b", "c"}.
std::vector<std::string> split_options(const std::string& area, const std::string& marker) {
  std::vector<std::string> options;
  std::size_t cursor = 0;
  for (int k = 1;; ++k) {
    const std::size_t text = cursor + fmt::format("{}{}: ", marker, k).size();
    const std::size_t next = area.find(fmt::format(" {}{}: ", marker, k + 1), text);
    options.push_back(area.substr(text, next == std::string::npos ? std::string::npos : next - text));
    if (next == std::string::npos) return options;
    cursor = next + 1;
  }
}

TaskRecord parse_instruction(const std::string& instruction, const std::string& answer, const std::string& prefix,
                             bool true_false, const std::string& place) {
  if (instruction.compare(0, prefix.size(), prefix) != 0)
    throw Error(fmt::format("{}: expected the instruction to start with \"{}\"", place, prefix));
  TaskRecord record;
  const std::string body = instruction.substr(prefix.size());
  if (true_false) {
    const std::size_t end = body.find("\n\nAnswer format");
    if (end == std::string::npos)
      throw Error(fmt::format("{}: expected \"\\n\\nAnswer format\" after the question in the instruction", place));
    record.question = body.substr(0, end);
    if (answer != "true" && answer != "false")
      throw Error(fmt::format("{}: expected the answer \"true\" or \"false\", found \"{}\"", place, answer));
    record.gold = answer == "true" ? 1 : 0;
    return record;
  }
  std::string marker = "Answer";
  std::size_t start = body.find("\n\nAnswer1: ");
  if (start == std::string::npos) {
    marker = "Option";
    start = body.find("\n\nOption1: ");
  }
  if (start == std::string::npos)
    throw Error(
        fmt::format("{}: found no options in the instruction: expected \"\\n\\nAnswer1: \" or "
                    "\"\\n\\nOption1: \" after the question",
                    place));
  record.question = body.substr(0, start);
  const std::size_t end = body.find("Answer format", start + 2);
  std::string area = body.substr(start + 2, end == std::string::npos ? std::string::npos : end - start - 2);
  area.erase(area.find_last_not_of(" \t\r\n") + 1);
  record.options = split_options(area, marker);

  std::string lower = marker;
  lower[0] = static_cast<char>(lower[0] - 'A' + 'a');
  const std::string digits = answer.compare(0, lower.size(), lower) == 0 ? answer.substr(lower.size()) : "";
  const bool numeric = !digits.empty() && digits.size() < 4 &&
                       std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int number = numeric ? std::stoi(digits) : 0;
  if (number < 1 || number > static_cast<int>(record.options.size()))
    throw Error(fmt::format("{}: expected the answer {}1 … {}{} (one of the instruction's {} options), found \"{}\"",
                            place, lower, lower, record.options.size(), record.options.size(), answer));
  record.gold = number - 1;
  return record;
}

}  // namespace

std::vector<TaskRecord> read_piqa(const std::string& path, const std::string& labels_path) {
  std::vector<TaskRecord> records;
  const std::vector<json> objects = read_json_lines(path);
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const std::string where = fmt::format("line {}", i + 1);
    TaskRecord record;
    record.question = string_field(objects[i], "goal", path, where);
    record.options = {string_field(objects[i], "sol1", path, where), string_field(objects[i], "sol2", path, where)};
    records.push_back(std::move(record));
  }
  const std::vector<std::string> labels = split_lines(read_file(labels_path));
  if (labels.size() > records.size())
    throw Error(
        fmt::format("{}: line {}: a label beyond the last item of {} (line {}): expected one label per item, line "
                    "for line",
                    labels_path, records.size() + 1, path, records.size()));
  if (labels.size() < records.size())
    throw Error(
        fmt::format("{}: ends at line {}, but {} has {} items (line {} has no label): expected one label per "
                    "item, line for line",
                    labels_path, labels.size(), path, records.size(), labels.size() + 1));
  for (std::size_t i = 0; i < labels.size(); ++i) {
    std::string label = labels[i];
    label.erase(label.find_last_not_of(" \t") + 1);
    if (label != "0" && label != "1")
      throw Error(fmt::format("{}: line {}: expected the label 0 or 1, found \"{}\"", labels_path, i + 1, labels[i]));
    records[i].gold = label == "1" ? 1 : 0;
  }
  return records;
}

std::string piqa_labels_path(const std::string& path) {
  const std::string suffix = ".jsonl";
  const bool jsonl =
      path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  return (jsonl ? path.substr(0, path.size() - suffix.size()) : path) + "-labels.lst";
}

std::vector<TaskRecord> read_instruction_json(const std::string& path, const std::string& prefix, bool true_false) {
  json list;
  try {
    list = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  if (!list.is_array())
    throw Error(
        fmt::format("{}: line 1: expected a JSON list of {{instruction, input, output, answer}} objects, "
                    "found {}",
                    path, a_type(list)));
  if (list.empty()) throw Error(fmt::format("{}: the JSON list holds no items", path));
  std::vector<TaskRecord> records;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("item {} (0-based)", i);
    if (!list[i].is_object())
      throw Error(fmt::format("{}: {}: expected a JSON object, found {}", path, where, a_type(list[i])));
    const std::string instruction = string_field(list[i], "instruction", path, where);
    const std::string answer = string_field(list[i], "answer", path, where);
    records.push_back(parse_instruction(instruction, answer, prefix, true_false, path + ": " + where));
  }
  return records;
}

std::vector<TaskRecord> read_hellaswag(const std::string& path) {
  const std::vector<std::string> lines = split_lines(read_file(path));
  if (lines.empty()) throw Error(fmt::format("{}: holds no tasks (6 lines each)", path));
  if (lines.size() % 6 != 0)
    throw Error(
        fmt::format("{}: line {}: the file ends inside a task: {} lines is not a multiple of 6 (each task is "
                    "a context line, the gold ending 0-3 and 4 endings)",
                    path, lines.size(), lines.size()));
  std::vector<TaskRecord> records;
  for (std::size_t first = 0; first < lines.size(); first += 6) {
    const std::string& gold = lines[first + 1];
    if (gold.size() != 1 || gold[0] < '0' || gold[0] > '3')
      throw Error(
          fmt::format("{}: line {}: expected the gold ending 0, 1, 2 or 3, found \"{}\"", path, first + 2, gold));
    TaskRecord record;
    record.question = lines[first];
    record.options.assign(lines.begin() + first + 2, lines.begin() + first + 6);
    record.gold = gold[0] - '0';
    records.push_back(std::move(record));
  }
  return records;
}

std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& path,
                                                std::vector<int64_t>* line_of_row) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool field_start = true, quoted = false, in_quotes = false;
  int64_t line = 1, row_line = 1, quote_line = 1;
  auto end_field = [&] {
    row.push_back(std::move(field));
    field.clear();
    field_start = true;
    quoted = false;
  };
  auto end_row = [&] {
    const bool blank = row.empty() && field.empty() && !quoted;
    end_field();
    if (!blank) {
      rows.push_back(std::move(row));
      if (line_of_row) line_of_row->push_back(row_line);
    }
    row.clear();
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {  // everything up to the closing quote is the field's, line ends included
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        in_quotes = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
    } else if (c == '"' && field_start) {
      in_quotes = quoted = true;
      field_start = false;
      quote_line = line;
    } else if (c == ',') {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_row();
      row_line = ++line;
    } else {  // a quote inside an unquoted field, or after a closing quote, is kept (as Python's csv does)
      field += c;
      field_start = false;
    }
  }
  if (in_quotes)
    throw Error(fmt::format("{}: line {}: unterminated quote: the quoted field that opens here never closes", path,
                            quote_line));
  if (!row.empty() || !field.empty() || quoted) end_row();
  return rows;
}

std::vector<TaskRecord> read_mmlu_csv(const std::string& path) {
  std::vector<int64_t> lines;
  const auto rows = parse_csv(read_file(path), path, &lines);
  if (rows.empty()) throw Error(fmt::format("{}: holds no rows (question, A, B, C, D, answer)", path));
  std::vector<TaskRecord> records;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    if (row.size() != 6)
      throw Error(fmt::format("{}: line {}: expected 6 fields (question, A, B, C, D, answer letter), found {}", path,
                              lines[i], row.size()));
    const std::string& letter = row[5];
    if (letter.size() != 1 || letter[0] < 'A' || letter[0] > 'D')
      throw Error(
          fmt::format("{}: line {}: expected the answer letter A, B, C or D, found \"{}\"", path, lines[i], letter));
    TaskRecord record;
    record.question = row[0];
    record.options.assign(row.begin() + 1, row.begin() + 5);
    record.gold = letter[0] - 'A';
    records.push_back(std::move(record));
  }
  return records;
}

std::vector<std::string> mmlu_subjects(const std::string& dir) {
  const fs::path test = fs::path(dir) / "test";
  std::error_code error;
  if (!fs::is_directory(test, error))
    throw Error(fmt::format("{}: no such folder (MMLU's test/SUBJECT_test.csv files)", test.string()));
  const std::string suffix = "_test.csv";
  std::vector<std::string> subjects;
  for (const auto& entry : fs::directory_iterator(test)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      subjects.push_back(name.substr(0, name.size() - suffix.size()));
  }
  if (subjects.empty()) throw Error(fmt::format("{}: holds no SUBJECT_test.csv files", test.string()));
  std::sort(subjects.begin(), subjects.end());
  return subjects;
}

std::vector<TaskRecord> read_triviaqa(const std::string& path) {
  std::vector<TaskRecord> records;
  const std::vector<json> objects = read_json_lines(path);
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const std::string where = fmt::format("line {}", i + 1);
    TaskRecord record;
    record.question = string_field(objects[i], "question", path, where);
    auto answers = objects[i].find("answers");
    const bool valid = answers != objects[i].end() && answers->is_array() && !answers->empty() &&
                       std::all_of(answers->begin(), answers->end(), [](const json& a) { return a.is_string(); });
    if (!valid)
      throw Error(fmt::format("{}: {}: expected a field \"answers\" holding a non-empty list of strings", path, where));
    for (const json& answer : *answers) record.answers.push_back(answer.get<std::string>());
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace qforge::eval
