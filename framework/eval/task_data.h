// Readers for the task data formats of ../shared/tasks (see docs/evaluation.md): each returns the records in file
// order. eval/task_prompts.cpp turns them into the harness's requests. A missing or malformed file is a
// qforge::Error naming the file, the line (JSON lists: the item) and what was expected.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::eval {

// One record of any task: a question (PIQA's goal, HellaSwag's context line, WinoGrande's sentence, ...), its
// options, the gold option's index and, for TriviaQA, the accepted answers.
struct TaskRecord {
  std::string question;
  std::vector<std::string> options;
  int gold = -1;
  std::vector<std::string> answers;
};

// PIQA: one {"goal", "sol1", "sol2"} object per line, the label (0 or 1) of line i on line i of `labels_path`.
std::vector<TaskRecord> read_piqa(const std::string& path, const std::string& labels_path);

// PIQA's labels file beside a given valid.jsonl: X.jsonl → X-labels.lst.
std::string piqa_labels_path(const std::string& path);

// LLM-Adapters' instruction JSON: a list of {instruction, input, output, answer}. The question is the text after
// `prefix` up to "\n\nAnswer1: " or "\n\nOption1: " (options "Answer1: a Answer2: b ..." up to "Answer format"),
// gold "answer2"/"option2" → 1; or, with `true_false`, up to "\n\nAnswer format", no options, gold "false" → 0 and
// "true" → 1.
std::vector<TaskRecord> read_instruction_json(const std::string& path, const std::string& prefix, bool true_false);

// llama.cpp's hellaswag_val_full.txt: 6 lines per task (context, gold 0-3, 4 endings).
std::vector<TaskRecord> read_hellaswag(const std::string& path);

// RFC 4180 CSV: rows of fields; quoted fields may hold commas, "" and line ends (kept as they are); rows end with
// LF, CRLF or CR outside quotes, or at the end of the text. `line_of_row` receives each row's first line (1-based).
// Blank lines are skipped (as pandas, which MMLU's own code reads these files with, does).
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& path,
                                                std::vector<int64_t>* line_of_row = nullptr);

// An MMLU CSV (no header; question, A, B, C, D, answer letter).
std::vector<TaskRecord> read_mmlu_csv(const std::string& path);

// MMLU subjects: the SUBJECT of each test/SUBJECT_test.csv in `dir`, sorted by name.
std::vector<std::string> mmlu_subjects(const std::string& dir);

// TriviaQA: one {"id", "question", "answers": [...]} object per line.
std::vector<TaskRecord> read_triviaqa(const std::string& path);

}  // namespace qforge::eval
