// The requests of each task as lm-evaluation-harness v0.4's task YAMLs define them (doc_to_text, doc_to_choice,
// target_delimiter " ", fewshot_delimiter "\n\n"), built from the records eval/task_data.cpp reads.
#include "framework/common/error.h"
#include "framework/eval/task_data.h"
#include "framework/eval/tasks.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <random>

namespace qforge::eval {
namespace {

namespace fs = std::filesystem;

constexpr char kChoosePrefix[] = "Please choose the correct answer to the question: ";
constexpr char kBlankPrefix[] =
    "Please choose the correct answer to fill in the blank to complete the given sentence: ";
constexpr char kTrueFalsePrefix[] = "Please answer the following question with true or false, question: ";

struct Definition {
  std::string name;
  std::string file;  // under TaskOptions::data_dir
  bool acc_norm;
  std::string note;
};

const std::vector<Definition>& definitions() {
  static const std::vector<Definition> kDefinitions = {
      {"piqa", "piqa/valid.jsonl", true, ""},
      {"arc_easy", "arc-easy/test.json", true, ""},
      {"arc_challenge", "arc-challenge/test.json", true, ""},
      {"openbookqa", "openbookqa/test.json", true, ""},
      {"winogrande", "winogrande/test.json", false, ""},
      {"boolq", "boolq/test.json", false,
       "BoolQ's passage is absent from this data: questions are asked without it (the harness's prompt starts with "
       "the passage)"},
      {"siqa", "siqa/test.json", false,
       "Social IQa's context and question come merged in this format: the prompt is \"Q: {context question}\\nA:\", "
       "as the harness's \"Q: {context} {question}\\nA:\" when the two are joined by one space"},
      {"hellaswag", "hellaswag/hellaswag_val_full.txt", true,
       "the text comes from llama.cpp's preprocessed file (hellaswag_val_full.txt), whose cleaning of the WikiHow "
       "markup differs slightly from the harness's preprocess()"},
      {"mmlu", "mmlu", false, ""},
      {"triviaqa", "triviaqa/triviaqa_1000.jsonl", false, ""},
  };
  return kDefinitions;
}

// Python's str.isspace(): what its strip() removes.
bool python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Whether a UTF-8 whitespace character (as Python sees it) takes text[begin, end) exactly.
bool space_between(const std::string& text, std::size_t begin, std::size_t end) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const std::size_t size = end - begin;
  if (size == 1) return byte(begin) < 0x80 && python_space(byte(begin));
  const bool tails =
      std::all_of(text.begin() + begin + 1, text.begin() + end, [](char c) { return (c & 0xC0) == 0x80; });
  if (size == 2 && (byte(begin) & 0xE0) == 0xC0 && tails)
    return python_space(((byte(begin) & 0x1Fu) << 6) | (byte(begin + 1) & 0x3Fu));
  if (size == 3 && (byte(begin) & 0xF0) == 0xE0 && tails)
    return python_space(((byte(begin) & 0x0Fu) << 12) | ((byte(begin + 1) & 0x3Fu) << 6) | (byte(begin + 2) & 0x3Fu));
  return false;  // no 4-byte character is whitespace
}

std::size_t char_length(char lead) {
  const auto b = static_cast<unsigned char>(lead);
  return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Python's str.lstrip() / strip() on UTF-8 text (U+0085 and U+00A0 included: an MMLU question ends with U+0085).
std::string python_strip(const std::string& text, bool right = true) {
  std::size_t first = 0, last = text.size();
  while (first < last) {
    const std::size_t length = std::min(char_length(text[first]), last - first);
    if (!space_between(text, first, first + length)) break;
    first += length;
  }
  while (right && first < last) {
    std::size_t begin = last - 1;
    while (begin > first && last - begin < 3 && (text[begin] & 0xC0) == 0x80) --begin;
    if (!space_between(text, begin, last)) break;
    last = begin;
  }
  return text.substr(first, last - first);
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string text;
  for (std::size_t i = 0; i < parts.size(); ++i) text += (i ? separator : "") + parts[i];
  return text;
}

// One context shared by the choices; continuations are the target delimiter " " and the choice.
TaskItem shared_context_item(std::string context, std::vector<std::string> choices, int gold) {
  TaskItem item;
  item.contexts = {std::move(context)};
  for (const std::string& choice : choices) item.continuations.push_back(" " + choice);
  item.choices = std::move(choices);
  item.gold = gold;
  return item;
}

// The zero-shot item of a record (every task but MMLU).
TaskItem make_item(const std::string& task, const TaskRecord& record, const std::string& place) {
  const std::string& q = record.question;
  if (task == "piqa" || task == "arc_easy" || task == "arc_challenge")
    return shared_context_item("Question: " + q + "\nAnswer:", record.options, record.gold);
  if (task == "openbookqa" || task == "hellaswag") return shared_context_item(q, record.options, record.gold);
  if (task == "siqa") return shared_context_item("Q: " + q + "\nA:", record.options, record.gold);
  if (task == "boolq") {
    // LLM-Adapters appended the "?" that the harness's template adds to BoolQ's questions (none ends with one).
    const std::string question = !q.empty() && q.back() == '?' ? q.substr(0, q.size() - 1) : q;
    return shared_context_item("Question: " + question + "?\nAnswer:", {"no", "yes"}, record.gold);
  }
  TaskItem item;
  if (task == "winogrande") {  // partial scoring: the option fills the blank, the rest of the sentence is scored
    const std::size_t blank = q.find('_');
    if (blank == std::string::npos)
      throw Error(fmt::format("{}: expected a blank \"_\" in the sentence \"{}\"", place, q));
    for (const std::string& option : record.options) item.contexts.push_back(q.substr(0, blank) + option);
    item.continuations = {" " + python_strip(q.substr(blank + 1))};
    item.choices = item.contexts;
    item.gold = record.gold;
  } else {  // triviaqa
    item.contexts = {"Question: " + q + "?\nAnswer:"};
    item.answers = record.answers;
  }
  return item;
}

// A few-shot example: the item's context and its gold target (generation: the first accepted answer).
std::string shot_text(const TaskItem& item) {
  if (item.choices.empty()) return item.contexts[0] + " " + item.answers[0];
  return item.context(item.gold) + item.continuation(item.gold);
}

uint64_t draw_below(std::mt19937_64& rng, uint64_t n) {  // uniform in [0, n), without modulo bias
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  uint64_t x;
  do x = rng();
  while (x >= kMax - kMax % n);
  return x % n;
}

// Item `item`'s shots: min(k, count - 1) distinct other items, in the order drawn from
// std::mt19937_64(seed ^ 0x9E3779B97F4A7C15 * (item + 1)), each draw uniform over [0, count) with rejection of
// biased values, of the item itself and of repeats. Items keep their shots whatever --limit is.
std::vector<std::size_t> sample_shots(std::size_t item, std::size_t count, int64_t k, uint64_t seed) {
  std::vector<std::size_t> picks;
  const std::size_t wanted = std::min<std::size_t>(static_cast<std::size_t>(k), count - 1);
  std::mt19937_64 rng(seed ^ (0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(item) + 1)));
  while (picks.size() < wanted) {
    const std::size_t pick = draw_below(rng, count);
    if (pick != item && std::find(picks.begin(), picks.end(), pick) == picks.end()) picks.push_back(pick);
  }
  return picks;
}

std::string mmlu_question(const TaskRecord& row) {
  return fmt::format("{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:", python_strip(row.question), row.options[0],
                     row.options[1], row.options[2], row.options[3]);
}

// MMLU: per subject, the description, the first `shots` dev rows answered, then each test row's question.
void load_mmlu(Task& task, const std::string& dir, const TaskOptions& options) {
  static const std::vector<std::string> kLetters = {"A", "B", "C", "D"};
  for (const std::string& subject : mmlu_subjects(dir)) {
    const std::string test_path = (fs::path(dir) / "test" / (subject + "_test.csv")).string();
    const std::vector<TaskRecord> rows = read_mmlu_csv(test_path);
    task.files.push_back(test_path);
    task.total_items += static_cast<int64_t>(rows.size());
    std::string subject_words = subject;
    std::replace(subject_words.begin(), subject_words.end(), '_', ' ');
    std::string prefix = "The following are multiple choice questions (with answers) about " + subject_words + ".\n\n";
    if (task.shots > 0) {
      const std::string dev_path = (fs::path(dir) / "dev" / (subject + "_dev.csv")).string();
      const std::vector<TaskRecord> dev = read_mmlu_csv(dev_path);
      task.files.push_back(dev_path);
      std::vector<std::string> shots;
      for (std::size_t i = 0; i < dev.size() && static_cast<int64_t>(i) < task.shots; ++i)
        shots.push_back(mmlu_question(dev[i]) + " " + kLetters[dev[i].gold]);
      prefix += join(shots, "\n\n") + "\n\n";
    }
    const std::size_t count = options.limit > 0 ? std::min<std::size_t>(options.limit, rows.size()) : rows.size();
    for (std::size_t i = 0; i < count; ++i) {
      TaskItem item = shared_context_item(prefix + mmlu_question(rows[i]), kLetters, rows[i].gold);
      item.index = static_cast<int64_t>(i);
      item.subject = subject;
      task.items.push_back(std::move(item));
    }
  }
}

std::vector<TaskRecord> read_records(const std::string& name, const std::string& path,
                                     std::vector<std::string>& files) {
  files.push_back(path);
  if (name == "piqa") {
    files.push_back(piqa_labels_path(path));
    return read_piqa(path, files.back());
  }
  if (name == "hellaswag") return read_hellaswag(path);
  if (name == "triviaqa") return read_triviaqa(path);
  if (name == "winogrande") return read_instruction_json(path, kBlankPrefix, false);
  if (name == "boolq") return read_instruction_json(path, kTrueFalsePrefix, true);
  return read_instruction_json(path, kChoosePrefix, false);
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (const Definition& definition : definitions()) names.push_back(definition.name);
    return names;
  }();
  return kNames;
}

Task load_task(const std::string& name, const TaskOptions& options) {
  auto found = std::find_if(definitions().begin(), definitions().end(),
                            [&](const Definition& definition) { return definition.name == name; });
  if (found == definitions().end())
    throw UsageError(fmt::format("unknown task \"{}\": the tasks are {}", name, join(task_names(), ", ")));
  if (options.shots < -1) throw UsageError(fmt::format("shots = {} must be 0 or more", options.shots));
  if (options.limit < 0) throw UsageError(fmt::format("limit = {} must be 0 (every item) or more", options.limit));

  Task task;
  task.spec.name = name;
  task.spec.reports_acc_norm = found->acc_norm;
  task.spec.note = found->note;
  task.shots = options.shots >= 0 ? options.shots : name == "mmlu" ? 5 : 0;
  const std::string path = !options.path.empty() ? options.path : (fs::path(options.data_dir) / found->file).string();
  if (name == "mmlu") {
    load_mmlu(task, path, options);
    return task;
  }
  if (name == "triviaqa") {
    task.spec.kind = TaskKind::kGenerateUntil;
    task.spec.until = {"\n", ".", ","};
    task.spec.max_gen_tokens = 256;
  }

  const std::vector<TaskRecord> records = read_records(name, path, task.files);
  std::vector<TaskItem> all;
  for (std::size_t i = 0; i < records.size(); ++i) {
    all.push_back(make_item(name, records[i], fmt::format("{}: item {} (0-based)", path, i)));
    all.back().index = static_cast<int64_t>(i);
  }
  task.total_items = static_cast<int64_t>(all.size());
  const std::size_t count = options.limit > 0 ? std::min<std::size_t>(options.limit, all.size()) : all.size();
  for (std::size_t i = 0; i < count; ++i) {
    TaskItem item = all[i];
    if (task.shots > 0 && all.size() > 1) {
      std::vector<std::string> shots;
      for (std::size_t pick : sample_shots(i, all.size(), task.shots, options.seed))
        shots.push_back(shot_text(all[pick]));
      const std::string prefix = join(shots, "\n\n") + "\n\n";
      for (std::string& context : item.contexts) context = prefix + context;
    }
    task.items.push_back(std::move(item));
  }
  if (task.shots > 0) {
    task.spec.note += fmt::format(
        "{}the {} examples before each item are drawn from the same file (the item excluded) with std::mt19937_64 "
        "and seed {}, where the harness draws them from a training split with Python's random",
        task.spec.note.empty() ? "" : "; ", task.shots, options.seed);
  }
  return task;
}

std::string normalize_answer(const std::string& text) {
  static const std::string kPunctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";  // Python's string.punctuation
  std::string normalized;
  for (char c : text) {
    if (kPunctuation.find(c) != std::string::npos) continue;
    normalized += c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return normalized;
}

std::string cut_at_stops(const std::string& text, const std::vector<std::string>& until) {
  std::size_t end = text.size();
  for (const std::string& stop : until)
    if (!stop.empty()) end = std::min(end, text.find(stop));
  return python_strip(text.substr(0, end), /*right=*/false);
}

}  // namespace qforge::eval
