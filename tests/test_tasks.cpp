// Task data and prompts (eval/tasks.h): the files of ../shared/tasks read whole (counts, gold distributions), the
// first item of each task against prompts written out by hand from the data (MMLU's 5-shot prompt as Python's csv
// module reads the files), few-shot and --limit, answer normalization, and malformed files, one per error.
#include "framework/common/error.h"
#include "framework/eval/task_data.h"
#include "framework/eval/tasks.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace qforge::eval {
namespace {

namespace fs = std::filesystem;

const fs::path kShared = QFORGE_SHARED_DIR;
const fs::path kTasks = kShared / "tasks";

#define SKIP_WITHOUT(path)                                                              \
  if (!fs::exists(path))                                                                \
  GTEST_SKIP() << (path).string()                                                       \
               << " is absent: the shared test data (../shared beside the repository) " \
                  "is not on this machine"

Task load(const std::string& name, int64_t shots = -1, int64_t limit = 0, uint64_t seed = 1234) {
  TaskOptions options;
  options.data_dir = kTasks.string();
  options.shots = shots;
  options.limit = limit;
  options.seed = seed;
  return load_task(name, options);
}

std::vector<std::string> with_space(const std::vector<std::string>& choices) {
  std::vector<std::string> continuations;
  for (const std::string& choice : choices) continuations.push_back(" " + choice);
  return continuations;
}

std::vector<int64_t> gold_counts(const Task& task, int choices) {
  std::vector<int64_t> counts(choices, 0);
  for (const TaskItem& item : task.items) ++counts.at(item.gold);
  return counts;
}

TEST(Tasks, NamesAndUnknownName) {
  EXPECT_EQ(task_names(), (std::vector<std::string>{"piqa", "arc_easy", "arc_challenge", "openbookqa", "winogrande",
                                                    "boolq", "siqa", "hellaswag", "mmlu", "triviaqa"}));
  try {
    load_task("hellaswag_ru", TaskOptions{});
    FAIL() << "an unknown task loaded";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("hellaswag_ru"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("piqa, arc_easy, arc_challenge"), std::string::npos) << e.what();
  }
  TaskOptions negative;
  negative.limit = -1;
  EXPECT_THROW(load_task("piqa", negative), UsageError);
}

TEST(Tasks, Piqa) {
  SKIP_WITHOUT(kTasks / "piqa/valid.jsonl");
  const Task task = load("piqa");
  EXPECT_EQ(task.items.size(), 1838u);
  EXPECT_EQ(task.total_items, 1838);
  EXPECT_EQ(task.shots, 0);
  EXPECT_EQ(task.spec.kind, TaskKind::kMultipleChoice);
  EXPECT_TRUE(task.spec.reports_acc_norm);
  EXPECT_EQ(task.files, (std::vector<std::string>{(kTasks / "piqa/valid.jsonl").string(),
                                                  (kTasks / "piqa/valid-labels.lst").string()}));
  const TaskItem& item = task.items[0];
  EXPECT_EQ(item.index, 0);
  EXPECT_EQ(item.contexts, (std::vector<std::string>{"Question: How do I ready a guinea pig cage for it's new "
                                                     "occupants?\nAnswer:"}));
  const std::vector<std::string> choices = {
      "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also "
      "need to supply it with a water bottle and a food dish.",
      "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also "
      "need to supply it with a water bottle and a food dish."};
  EXPECT_EQ(item.choices, choices);
  EXPECT_EQ(item.continuations, with_space(choices));
  EXPECT_EQ(item.gold, 0);
  EXPECT_EQ(item.context(1), item.contexts[0]);
  EXPECT_EQ(item.continuation(1), " " + choices[1]);
  EXPECT_EQ(task.items[1837].index, 1837);
}

TEST(Tasks, ArcAndOpenBookQa) {
  SKIP_WITHOUT(kTasks / "arc-easy/test.json");
  const Task easy = load("arc_easy");
  EXPECT_EQ(easy.items.size(), 2376u);
  EXPECT_TRUE(easy.spec.reports_acc_norm);
  EXPECT_EQ(easy.items[0].contexts, (std::vector<std::string>{"Question: Which statement best explains why "
                                                              "photosynthesis is the foundation of most food webs?"
                                                              "\nAnswer:"}));
  EXPECT_EQ(easy.items[0].choices,
            (std::vector<std::string>{"Sunlight is the source of energy for nearly all ecosystems.",
                                      "Most ecosystems are found on land instead of in water.",
                                      "Carbon dioxide is more available than other gases.",
                                      "The producers in all ecosystems are plants."}));
  EXPECT_EQ(easy.items[0].continuations, with_space(easy.items[0].choices));
  EXPECT_EQ(easy.items[0].gold, 0);
  // 3 and 5 answers
  EXPECT_EQ(easy.items[93].choices, (std::vector<std::string>{"decrease", "increase", "remain the same"}));
  EXPECT_EQ(easy.items[93].gold, 1);
  EXPECT_EQ(easy.items[1441].choice_count(), 5u);
  EXPECT_EQ(easy.items[1441].choices[4], "It is using less energy than when it is active.");
  EXPECT_EQ(easy.items[1441].gold, 4);
  EXPECT_EQ(gold_counts(easy, 5), (std::vector<int64_t>{596, 585, 633, 561, 1}));

  const Task challenge = load("arc_challenge");
  EXPECT_EQ(challenge.items.size(), 1172u);
  EXPECT_EQ(challenge.items[0].contexts[0],
            "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
            "likely effect of this increase in rotation?\nAnswer:");
  EXPECT_EQ(challenge.items[0].choices[2], "Planetary days will become shorter.");
  EXPECT_EQ(challenge.items[0].gold, 2);

  const Task obqa = load("openbookqa");
  EXPECT_EQ(obqa.items.size(), 500u);
  EXPECT_TRUE(obqa.spec.reports_acc_norm);
  EXPECT_EQ(obqa.items[0].contexts[0],
            "A person wants to start saving money so that they can afford a nice vacation at the end of the year. "
            "After looking over their budget and expenses, they decide the best way to save money is to");
  EXPECT_EQ(obqa.items[0].choices,
            (std::vector<std::string>{"make more phone calls", "quit eating lunch out", "buy less with monopoly money",
                                      "have lunch with friends"}));
  EXPECT_EQ(obqa.items[0].gold, 1);
}

TEST(Tasks, WinograndePartialScoring) {
  SKIP_WITHOUT(kTasks / "winogrande/test.json");
  const Task task = load("winogrande");
  EXPECT_EQ(task.items.size(), 1267u);
  EXPECT_FALSE(task.spec.reports_acc_norm);
  const TaskItem& item = task.items[0];
  EXPECT_EQ(item.contexts, (std::vector<std::string>{"Sarah was a much better surgeon than Maria so Sarah",
                                                     "Sarah was a much better surgeon than Maria so Maria"}));
  EXPECT_EQ(item.continuations, (std::vector<std::string>{" always got the easier cases."}));
  EXPECT_EQ(item.choices, item.contexts);
  EXPECT_EQ(item.gold, 1);
  EXPECT_EQ(item.context(1), item.contexts[1]);
  EXPECT_EQ(item.continuation(1), " always got the easier cases.");
  EXPECT_EQ(gold_counts(task, 2), (std::vector<int64_t>{628, 639}));
}

TEST(Tasks, BoolqWithoutPassage) {
  SKIP_WITHOUT(kTasks / "boolq/test.json");
  const Task task = load("boolq");
  EXPECT_EQ(task.items.size(), 3270u);
  EXPECT_FALSE(task.spec.reports_acc_norm);
  EXPECT_NE(task.spec.note.find("passage is absent"), std::string::npos);
  // The data's questions end with the "?" that LLM-Adapters added; the harness's template adds it once.
  EXPECT_EQ(task.items[0].contexts[0], "Question: does ethanol take more energy make that produces?\nAnswer:");
  EXPECT_EQ(task.items[1].contexts[0], "Question: is house tax and property tax are same?\nAnswer:");
  EXPECT_EQ(task.items[0].choices, (std::vector<std::string>{"no", "yes"}));
  EXPECT_EQ(task.items[0].continuations, (std::vector<std::string>{" no", " yes"}));
  EXPECT_EQ(task.items[0].gold, 0);
  EXPECT_EQ(gold_counts(task, 2), (std::vector<int64_t>{1237, 2033}));
}

TEST(Tasks, Hellaswag) {
  SKIP_WITHOUT(kTasks / "hellaswag/hellaswag_val_full.txt");
  const Task task = load("hellaswag");
  EXPECT_EQ(task.items.size(), 10042u);
  EXPECT_TRUE(task.spec.reports_acc_norm);
  EXPECT_NE(task.spec.note.find("llama.cpp"), std::string::npos);
  EXPECT_EQ(gold_counts(task, 4), (std::vector<int64_t>{2515, 2485, 2584, 2458}));
  const TaskItem& item = task.items[0];
  EXPECT_EQ(item.contexts, (std::vector<std::string>{"Roof shingle removal: A man is sitting on a roof. he"}));
  EXPECT_EQ(item.choices,
            (std::vector<std::string>{"is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                      "is holding a rubik's cube.", "starts pulling up roofing on a roof."}));
  EXPECT_EQ(item.continuations, with_space(item.choices));
  EXPECT_EQ(item.gold, 3);
}

TEST(Tasks, Mmlu) {
  SKIP_WITHOUT(kTasks / "mmlu/test");
  const Task task = load("mmlu");
  EXPECT_EQ(task.shots, 5);
  EXPECT_EQ(task.items.size(), 14042u);
  EXPECT_EQ(task.total_items, 14042);
  EXPECT_EQ(task.files.size(), 114u);
  EXPECT_FALSE(task.spec.reports_acc_norm);
  EXPECT_EQ(gold_counts(task, 4), (std::vector<int64_t>{3222, 3462, 3582, 3776}));
  std::map<std::string, int64_t> per_subject;
  for (const TaskItem& item : task.items) ++per_subject[item.subject];
  EXPECT_EQ(per_subject.size(), 57u);
  EXPECT_EQ(per_subject["abstract_algebra"], 100);
  EXPECT_EQ(per_subject["professional_law"], 1534);
  EXPECT_EQ(per_subject["moral_scenarios"], 895);
  EXPECT_EQ(per_subject["high_school_world_history"], 237);

  const TaskItem& first = task.items[0];
  EXPECT_EQ(first.subject, "abstract_algebra");
  EXPECT_EQ(first.index, 0);
  EXPECT_EQ(first.choices, (std::vector<std::string>{"A", "B", "C", "D"}));
  EXPECT_EQ(first.continuations, (std::vector<std::string>{" A", " B", " C", " D"}));
  EXPECT_EQ(first.gold, 1);
  // Python: rows = list(csv.reader(open(F, newline=''))); q = lambda r: r[0].strip() + "\nA. %s\nB. %s\nC. %s\nD. "
  // "%s\nAnswer:" % tuple(r[1:5]); description + "\n\n".join(q(r) + " " + r[5] for r in dev[:5]) + "\n\n" + q(test[0])
  const std::string expected =
      "The following are multiple choice questions (with answers) about abstract algebra.\n"
      "\n"
      "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
      "A. 0\n"
      "B. 1\n"
      "C. 2\n"
      "D. 3\n"
      "Answer: B\n"
      "\n"
      "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement"
      " 2 | If H and K are subgroups of G then HK is a subgroup of G.\n"
      "A. True, True\n"
      "B. False, False\n"
      "C. True, False\n"
      "D. False, True\n"
      "Answer: B\n"
      "\n"
      "Statement 1 | Every element of a group generates a cyclic subgroup of the group."
      " Statement 2 | The symmetric group S_10 has 10 elements.\n"
      "A. True, True\n"
      "B. False, False\n"
      "C. True, False\n"
      "D. False, True\n"
      "Answer: C\n"
      "\n"
      "Statement 1| Every function from a finite set onto itself must be one to one. Statement"
      " 2 | Every subgroup of an abelian group is abelian.\n"
      "A. True, True\n"
      "B. False, False\n"
      "C. True, False\n"
      "D. False, True\n"
      "Answer: A\n"
      "\n"
      "Find the characteristic of the ring 2Z.\n"
      "A. 0\n"
      "B. 3\n"
      "C. 12\n"
      "D. 30\n"
      "Answer: A\n"
      "\n"
      "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
      "A. 0\n"
      "B. 4\n"
      "C. 2\n"
      "D. 6\n"
      "Answer:";
  EXPECT_EQ(first.contexts, (std::vector<std::string>{expected}));
  EXPECT_EQ(task.items[99].index, 99);
  EXPECT_EQ(task.items[100].subject, "anatomy");
  EXPECT_EQ(task.items[100].index, 0);

  // Test rows are read whole: the first abstract_algebra row's fields.
  const std::vector<TaskRecord> rows = read_mmlu_csv((kTasks / "mmlu/test/abstract_algebra_test.csv").string());
  EXPECT_EQ(rows[0].question, "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.");
  EXPECT_EQ(rows[0].options, (std::vector<std::string>{"0", "4", "2", "6"}));
  EXPECT_EQ(rows[0].gold, 1);

  // Python's strip() removes U+0085 ending a sociology question; the CRLFs inside a dev question stay.
  auto sociology = std::find_if(task.items.begin(), task.items.end(),
                                [](const TaskItem& item) { return item.subject == "sociology" && item.index == 69; });
  ASSERT_NE(sociology, task.items.end());
  const std::string tail = "\n\nRole-learning theory suggests that\nA. we internalise";
  EXPECT_NE(sociology->contexts[0].find(tail), std::string::npos);
  auto college_math = std::find_if(task.items.begin(), task.items.end(),
                                   [](const TaskItem& item) { return item.subject == "college_mathematics"; });
  ASSERT_NE(college_math, task.items.end());
  EXPECT_NE(college_math->contexts[0].find("Which of the following statements must be true?\r\nI. All of the"),
            std::string::npos);
}

TEST(Tasks, MmluShotsAndLimit) {
  SKIP_WITHOUT(kTasks / "mmlu/test");
  const Task zero = load("mmlu", 0, 2);
  EXPECT_EQ(zero.items.size(), 114u);
  EXPECT_EQ(zero.total_items, 14042);
  EXPECT_EQ(zero.files.size(), 57u);  // no dev file is read
  EXPECT_EQ(zero.items[0].contexts[0],
            "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree for "
            "the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:");
  EXPECT_EQ(zero.items[1].index, 1);
  EXPECT_EQ(zero.items[2].subject, "anatomy");
  const Task one = load("mmlu", 1, 1);
  EXPECT_EQ(one.items[0].contexts[0],
            "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind all c in Z_3 "
            "such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\nFind the degree for "
            "the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:");
  const Task many = load("mmlu", 8, 1);  // 5 dev rows only
  EXPECT_EQ(many.items[0].contexts[0], load("mmlu", 5, 1).items[0].contexts[0]);
}

TEST(Tasks, TriviaQa) {
  SKIP_WITHOUT(kTasks / "triviaqa/triviaqa_1000.jsonl");
  const Task task = load("triviaqa");
  EXPECT_EQ(task.items.size(), 1000u);
  EXPECT_EQ(task.shots, 0);
  EXPECT_EQ(task.spec.kind, TaskKind::kGenerateUntil);
  EXPECT_EQ(task.spec.until, (std::vector<std::string>{"\n", ".", ","}));
  EXPECT_EQ(task.spec.max_gen_tokens, 256);
  const TaskItem& item = task.items[0];
  // The harness appends "?" even to a question ending with one.
  EXPECT_EQ(item.contexts, (std::vector<std::string>{"Question: Who was the first man sent into space, in 1961??"
                                                     "\nAnswer:"}));
  EXPECT_EQ(item.answers.size(), 48u);
  EXPECT_EQ(item.answers[0], "First man in space");
  EXPECT_EQ(item.answers[2], "Yuri Gagarin");
  EXPECT_TRUE(item.choices.empty());
  EXPECT_TRUE(item.continuations.empty());
}

TEST(Tasks, FewShotSamplesOtherItems) {
  SKIP_WITHOUT(kTasks / "piqa/valid.jsonl");
  const Task zero = load("piqa");
  const Task task = load("piqa", 3, 50);
  ASSERT_EQ(task.items.size(), 50u);
  EXPECT_EQ(task.total_items, 1838);
  EXPECT_EQ(task.shots, 3);
  EXPECT_NE(task.spec.note.find("mt19937_64"), std::string::npos);
  std::set<std::string> firsts;
  for (const TaskItem& item : task.items) {
    const std::string& own = zero.items[item.index].contexts[0];
    const std::string& context = item.contexts[0];
    ASSERT_GT(context.size(), own.size());
    EXPECT_EQ(context.substr(context.size() - own.size() - 2), "\n\n" + own);
    // Each shot: another item's context, " ", its gold solution; three of them joined by "\n\n".
    std::vector<std::size_t> shots;
    for (const TaskItem& other : zero.items) {
      const std::string shot = other.contexts[0] + other.continuation(other.gold) + "\n\n";
      if (context.find(shot) != std::string::npos) shots.push_back(other.index);
    }
    EXPECT_EQ(shots.size(), 3u) << context;
    EXPECT_EQ(std::count(shots.begin(), shots.end(), item.index), 0);
    firsts.insert(context.substr(0, 60));
  }
  EXPECT_GT(firsts.size(), 40u);  // shots differ between items
  // Deterministic: the seed decides, the limit does not.
  EXPECT_EQ(load("piqa", 3, 10).items[7].contexts, task.items[7].contexts);
  EXPECT_NE(load("piqa", 3, 10, 99).items[7].contexts, task.items[7].contexts);
}

TEST(Tasks, FewShotWinograndeAndTriviaQa) {
  SKIP_WITHOUT(kTasks / "winogrande/test.json");
  SKIP_WITHOUT(kTasks / "triviaqa/triviaqa_1000.jsonl");
  const Task wino = load("winogrande", 2, 3);
  const Task wino_zero = load("winogrande");
  for (const TaskItem& item : wino.items) {
    ASSERT_EQ(item.contexts.size(), 2u);
    const std::string prefix =
        item.contexts[0].substr(0, item.contexts[0].size() - wino_zero.items[item.index].contexts[0].size());
    EXPECT_EQ(item.contexts[1], prefix + wino_zero.items[item.index].contexts[1]);
    EXPECT_EQ(item.continuations, wino_zero.items[item.index].continuations);
    std::size_t filled = 0;  // a shot: the sentence with its gold option filled in
    for (const TaskItem& other : wino_zero.items)
      if (other.index != item.index &&
          prefix.find(other.contexts[other.gold] + other.continuations[0] + "\n\n") != std::string::npos)
        ++filled;
    EXPECT_EQ(filled, 2u) << prefix;
  }
  const Task trivia = load("triviaqa", 1, 1);
  const Task trivia_zero = load("triviaqa");
  std::size_t found = 0;
  for (const TaskItem& other : trivia_zero.items)
    if (trivia.items[0].contexts[0] ==
        other.contexts[0] + " " + other.answers[0] + "\n\n" + trivia_zero.items[0].contexts[0])
      ++found;
  EXPECT_EQ(found, 1u) << trivia.items[0].contexts[0];
}

TEST(Tasks, Limit) {
  SKIP_WITHOUT(kTasks / "hellaswag/hellaswag_val_full.txt");
  const Task task = load("hellaswag", 0, 7);
  EXPECT_EQ(task.items.size(), 7u);
  EXPECT_EQ(task.total_items, 10042);
  EXPECT_EQ(task.items[6].index, 6);
  EXPECT_EQ(load("hellaswag", 0, 20000).items.size(), 10042u);
}

TEST(Tasks, NormalizeAnswerAndStops) {
  EXPECT_EQ(normalize_answer("Yuri Gagarin"), "yuri gagarin");
  EXPECT_EQ(normalize_answer("  U.S.A.!  "), "  usa  ");
  EXPECT_EQ(normalize_answer("Rock 'n' Roll (band), #1 {x}~"), "rock n roll band 1 x");
  EXPECT_EQ(normalize_answer("Ünïcode É"), "Ünïcode É");  // ASCII only
  const std::vector<std::string> until = {"\n", ".", ","};
  EXPECT_EQ(cut_at_stops(" Yuri Gagarin\nQuestion: next", until), "Yuri Gagarin");
  EXPECT_EQ(cut_at_stops(" Paris, France.", until), "Paris");
  EXPECT_EQ(cut_at_stops("\t Mr. Smith", until), "Mr");
  EXPECT_EQ(cut_at_stops("\nLondon", until), "");
  EXPECT_EQ(cut_at_stops(" no stop here ", until), "no stop here ");
  EXPECT_EQ(cut_at_stops("  ", until), "");
  EXPECT_EQ(cut_at_stops("\xc2\xa0"
                         "Oslo",
                         {}),
            "Oslo");  // Python's lstrip() removes U+00A0 too
  EXPECT_EQ(cut_at_stops("a||b", {"||"}), "a");
}

// Malformed files: each error names the file and the line (JSON lists: the item).
class BadTaskFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qforge_test_tasks_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }

  // Loads `name` from `path`; expects a qforge::Error naming `file` and holding `pieces`.
  void expect_error(const std::string& name, const std::string& path, const std::string& file,
                    const std::vector<std::string>& pieces) {
    TaskOptions options;
    options.path = path;
    options.shots = 0;
    try {
      load_task(name, options);
      ADD_FAILURE() << name << " loaded " << path;
    } catch (const UsageError& e) {
      ADD_FAILURE() << "a usage error: " << e.what();
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(file), std::string::npos) << message;
      for (const std::string& piece : pieces) EXPECT_NE(message.find(piece), std::string::npos) << message;
    }
  }

  fs::path dir_;
};

const std::string kPiqaLine = R"({"goal": "g", "sol1": "a", "sol2": "b"})";

TEST_F(BadTaskFiles, Piqa) {
  const std::string missing = (dir_ / "absent.jsonl").string();
  expect_error("piqa", missing, missing, {"cannot open"});

  std::string path = write("p1.jsonl", kPiqaLine + "\n[1, 2]\n");
  write("p1-labels.lst", "0\n1\n");
  expect_error("piqa", path, path, {"line 2", "expected a JSON object"});

  path = write("p2.jsonl", kPiqaLine + "\n{\"goal\": \"g\", \n");
  write("p2-labels.lst", "0\n1\n");
  expect_error("piqa", path, path, {"line 2", "not JSON"});

  path = write("p3.jsonl", kPiqaLine + "\n" + R"({"goal": "g", "sol1": "a"})" + "\n");
  write("p3-labels.lst", "0\n1\n");
  expect_error("piqa", path, path, {"line 2", "\"sol2\""});

  path = write("p4.jsonl", kPiqaLine + "\n" + kPiqaLine + "\n");
  std::string labels = write("p4-labels.lst", "0\n2\n");
  expect_error("piqa", path, labels, {"line 2", "0 or 1", "\"2\""});

  path = write("p5.jsonl", kPiqaLine + "\n" + kPiqaLine + "\n" + kPiqaLine);
  labels = write("p5-labels.lst", "0\n1\n");
  expect_error("piqa", path, labels, {"line 3", "3 items"});

  path = write("p6.jsonl", kPiqaLine + "\n");
  labels = write("p6-labels.lst", "0\r\n1\r\n");
  expect_error("piqa", path, labels, {"line 2", "beyond the last item"});

  path = write("p7.jsonl", kPiqaLine + "\r\n" + kPiqaLine);  // CRLF and no final newline are fine
  write("p7-labels.lst", "1\r\n0");
  TaskOptions options;
  options.path = path;
  const Task task = load_task("piqa", options);
  ASSERT_EQ(task.items.size(), 2u);
  EXPECT_EQ(task.items[0].gold, 1);
  EXPECT_EQ(task.items[1].gold, 0);
  options.shots = 5;  // one other item to draw from
  EXPECT_EQ(load_task("piqa", options).items[0].contexts[0], "Question: g\nAnswer: a\n\nQuestion: g\nAnswer:");
  options.path = write("p8.jsonl", kPiqaLine);
  write("p8-labels.lst", "1");
  EXPECT_EQ(load_task("piqa", options).items[0].contexts[0], "Question: g\nAnswer:");
}

std::string instruction_item(const std::string& instruction, const std::string& answer) {
  return "{\"instruction\": \"" + instruction + "\", \"input\": \"\", \"output\": \"\", \"answer\": \"" + answer +
         "\"}";
}

TEST_F(BadTaskFiles, InstructionJson) {
  const std::string good = instruction_item(
      "Please choose the correct answer to the question: Q?\\n\\nAnswer1: x Answer2: y Answer3: z"
      "\\n\\nAnswer format: answer1/answer2/answer3",
      "answer3");
  std::string path = write("a1.json", "[\n" + good + ",\n" + good + ",\n");
  expect_error("arc_easy", path, path, {"not valid JSON", "line 4"});

  path = write("a2.json", "[" + good + ", 7]");
  expect_error("arc_easy", path, path, {"item 1", "expected a JSON object"});

  path = write("a3.json", "[" + good + ", {\"instruction\": \"x\"}]");
  expect_error("arc_easy", path, path, {"item 1", "\"answer\""});

  path = write("a4.json",
               "[" + good + ", " +
                   instruction_item("Please choose the correct answer to the question: Q? x, y or z", "answer1") + "]");
  expect_error("arc_easy", path, path, {"item 1", "found no options"});

  path = write("a5.json", "[" + good + ", " +
                              instruction_item("Please choose the correct answer to the question: Q?\\n\\nAnswer1: x "
                                               "Answer2: y\\n\\nAnswer format: answer1/answer2",
                                               "answer3") +
                              "]");
  expect_error("arc_easy", path, path, {"item 1", "\"answer3\"", "2 options"});

  path = write("a6.json", "{\"instruction\": \"x\"}");
  expect_error("openbookqa", path, path, {"line 1", "expected a JSON list"});

  path = write("a7.json", "[" + good + "]");
  const Task arc = load_task("arc_challenge", TaskOptions{"", path});
  EXPECT_EQ(arc.items[0].contexts[0], "Question: Q?\nAnswer:");
  EXPECT_EQ(arc.items[0].choices, (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(arc.items[0].gold, 2);

  path = write("w1.json", "[" +
                              instruction_item("Please choose the correct answer to fill in the blank to complete the "
                                               "given sentence: No blank here.\\n\\nOption1: A Option2: B Answer "
                                               "format: option1/option2",
                                               "option1") +
                              "]");
  expect_error("winogrande", path, path, {"item 0", "blank"});
  path = write("w2.json", "[" +
                              instruction_item("Please choose the correct answer to fill in the blank to complete the "
                                               "given sentence: A _ b.\\n\\nOption1: A Option2: B Answer "
                                               "format: option1/option2",
                                               "answer1") +
                              "]");
  expect_error("winogrande", path, path, {"item 0", "option1", "\"answer1\""});

  path = write("b1.json", "[" +
                              instruction_item("Please answer the following question with true or false, question: "
                                               "is it?\\n\\nAnswer format: true/false",
                                               "yes") +
                              "]");
  expect_error("boolq", path, path, {"item 0", "\"true\" or \"false\""});
}

TEST_F(BadTaskFiles, SocialIqaFormat) {
  const std::string path =
      write("siqa.json", "[" +
                             instruction_item("Please choose the correct answer to the question: Tracy didn't go "
                                              "home that evening and resisted Riley's attacks. What does Tracy need "
                                              "to do before this?\\n\\nAnswer1: make a new plan Answer2: Go home and "
                                              "see Riley Answer3: Find somewhere to go\\n\\nAnswer format: "
                                              "answer1/answer2/answer3",
                                              "answer3") +
                             "]");
  TaskOptions options;
  options.path = path;
  const Task task = load_task("siqa", options);
  ASSERT_EQ(task.items.size(), 1u);
  EXPECT_EQ(task.items[0].contexts[0],
            "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before "
            "this?\nA:");
  EXPECT_EQ(task.items[0].choices,
            (std::vector<std::string>{"make a new plan", "Go home and see Riley", "Find somewhere to go"}));
  EXPECT_EQ(task.items[0].gold, 2);
  EXPECT_FALSE(task.spec.reports_acc_norm);
  EXPECT_NE(task.spec.note.find("merged"), std::string::npos);
}

TEST_F(BadTaskFiles, Hellaswag) {
  const std::string task = "ctx\n0\ne0\ne1\ne2\ne3\n";
  std::string path = write("h1.txt", task + "ctx\n1\ne0\ne1\n");
  expect_error("hellaswag", path, path, {"line 10", "multiple of 6"});
  path = write("h2.txt", task + "ctx\n4\ne0\ne1\ne2\ne3\n");
  expect_error("hellaswag", path, path, {"line 8", "0, 1, 2 or 3", "\"4\""});
}

TEST_F(BadTaskFiles, TriviaQa) {
  const std::string path = write("t1.jsonl", R"({"question": "q", "answers": ["a"]})"
                                             "\n"
                                             R"({"question": "q", "answers": []})");
  expect_error("triviaqa", path, path, {"line 2", "\"answers\""});
}

TEST(Csv, Rfc4180) {
  std::vector<int64_t> lines;
  const auto rows =
      parse_csv("a,\"b,1\",\"say \"\"hi\"\"\"\r\n\"multi\r\nline\nfield\",x\n\nlast,\"\",row", "f.csv", &lines);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"a", "b,1", "say \"hi\""}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"multi\r\nline\nfield", "x"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"last", "", "row"}));
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 2, 6}));
  EXPECT_EQ(parse_csv("a,b\n", "f.csv"), (std::vector<std::vector<std::string>>{{"a", "b"}}));
  EXPECT_EQ(parse_csv("a,\n", "f.csv"), (std::vector<std::vector<std::string>>{{"a", ""}}));
  EXPECT_EQ(parse_csv("x\"y\",\"q\"z\n", "f.csv"),  // stray quotes kept, as Python's csv does
            (std::vector<std::vector<std::string>>{{"x\"y\"", "qz"}}));
  EXPECT_TRUE(parse_csv("", "f.csv").empty());
}

TEST_F(BadTaskFiles, MmluCsv) {
  const std::string row = "q,1,2,3,4,A\n";
  write("m1/test/a_test.csv", row + "q,1,2,3,A\n");
  expect_error("mmlu", (dir_ / "m1").string(), "a_test.csv", {"line 2", "6 fields", "found 5"});
  write("m2/test/a_test.csv", row + "\"multi\nline\",1,2,3,4,E\n");
  expect_error("mmlu", (dir_ / "m2").string(), "a_test.csv", {"line 2", "A, B, C or D", "\"E\""});
  write("m3/test/a_test.csv", row + row + "\"open,1,2,3,4,A\n" + row);
  expect_error("mmlu", (dir_ / "m3").string(), "a_test.csv", {"line 3", "unterminated quote"});
  write("m4/test/a_test.csv", row);
  TaskOptions options;
  options.path = (dir_ / "m4").string();
  options.shots = 1;
  try {
    load_task("mmlu", options);
    ADD_FAILURE() << "MMLU loaded without its dev file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a_dev.csv"), std::string::npos) << e.what();
  }
  expect_error("mmlu", (dir_ / "m5").string(), "m5", {"no such folder"});
}

}  // namespace
}  // namespace qforge::eval
