// Zero- and few-shot tasks as lm-evaluation-harness (v0.4 task YAMLs) defines them: readers for the data formats
// users have (the layout of ../shared/tasks, see docs/evaluation.md) and the requests each item makes. Nothing here
// runs a model: eval/task_scoring.h scores the requests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::eval {

enum class TaskKind { kMultipleChoice, kGenerateUntil };

// One item's requests.
// Multiple choice: choice i is scored as the log-likelihood of continuation(i) given context(i). Most tasks share
// one context between the choices (contexts.size() == 1) and have one continuation per choice; WinoGrande's
// partial scoring has one context per choice (the option substituted into the sentence) and one shared
// continuation (the rest of the sentence). Continuations start with the harness's target delimiter " ".
// Generation (TriviaQA): contexts[0] is the prompt, answers the accepted answers; no continuations.
struct TaskItem {
  int64_t index = 0;                       // the item's place in its file (MMLU: in its subject's test file), 0-based
  std::string subject;                     // MMLU subject ("abstract_algebra"); empty elsewhere
  std::vector<std::string> contexts;       // 1, or one per choice
  std::vector<std::string> continuations;  // one per choice, or 1 shared
  std::vector<std::string> choices;        // the harness's doc_to_choice texts: acc_norm divides by their length
  int gold = -1;                           // index of the right choice
  std::vector<std::string> answers;        // generate_until: accepted answers (any of them matches)

  const std::string& context(std::size_t choice) const { return contexts[contexts.size() == 1 ? 0 : choice]; }
  const std::string& continuation(std::size_t choice) const {
    return continuations[continuations.size() == 1 ? 0 : choice];
  }
  std::size_t choice_count() const { return choices.size(); }
};

struct TaskSpec {
  std::string name;  // "piqa", "arc_easy", "arc_challenge", "openbookqa", "winogrande", "boolq", "siqa",
                     // "hellaswag", "mmlu", "triviaqa"
  TaskKind kind = TaskKind::kMultipleChoice;
  bool reports_acc_norm = false;    // the harness reports acc_norm for this task
  std::vector<std::string> until;   // generate_until: stop strings
  int64_t max_gen_tokens = 256;     // generate_until: the harness's max_gen_toks
  std::string note;                 // where this data differs from the harness's (BoolQ has no passage here)
};

struct Task {
  TaskSpec spec;
  int64_t shots = 0;
  std::vector<TaskItem> items;
  std::vector<std::string> files;  // the files read
  int64_t total_items = 0;         // items in the files before --limit
};

struct TaskOptions {
  std::string data_dir;  // a folder laid out as ../shared/tasks (piqa/valid.jsonl, arc-easy/test.json, mmlu/dev, ...)
  std::string path;      // when set: this task's file (MMLU: its folder holding dev/ and test/) instead of data_dir's
  int64_t shots = -1;    // -1: the task's default (MMLU 5, others 0)
  int64_t limit = 0;     // 0: every item; else the first `limit` items (MMLU: of each subject), as harness --limit
  uint64_t seed = 1234;  // few-shot sampling for tasks without a dev split
};

// Every task name load_task knows, in the order results are printed.
const std::vector<std::string>& task_names();

// Reads the task's data and builds its items. A missing file, or a malformed one, is a qforge::Error naming the
// file, the line (or item) and what was expected; an unknown name is a qforge::UsageError listing the known ones.
Task load_task(const std::string& name, const TaskOptions& options);

// The harness's exact_match with ignore_case and ignore_punctuation: lower-cased (ASCII), Python's
// string.punctuation removed.
std::string normalize_answer(const std::string& text);

// A generated text cut at the first occurrence of any stop string (the harness's generate_until), then with leading
// whitespace removed (its remove_whitespace filter).
std::string cut_at_stops(const std::string& text, const std::vector<std::string>& until);

}  // namespace qforge::eval
