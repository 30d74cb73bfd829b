#include "framework/eval/task_eval.h"

#include "framework/common/error.h"
#include "framework/eval/task_scoring.h"
#include "framework/log/log.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <limits>

namespace qforge::eval {
namespace {

// Characters of a UTF-8 text, as Python's len() counts them (the harness's acc_norm divides by it).
double characters(const std::string& text) {
  double count = 0;
  for (char c : text) count += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return count;
}

int argmax(const std::vector<double>& values) {  // the first of equal maxima, as numpy's
  int best = 0;
  for (std::size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[best]) best = static_cast<int>(i);
  return best;
}

// The harness's _encode_pair: trailing spaces of the context move to the continuation; the continuation's tokens
// are those of context + continuation after the context's own tokens. Then, as its _loglikelihood_tokens, the
// context is cut from the left so that context + continuation fits the window plus one.
std::pair<std::vector<int64_t>, std::vector<int64_t>> encode_pair(const tok::Tokenizer& tokenizer,
                                                                  std::string context, std::string continuation,
                                                                  bool bos, int64_t window,
                                                                  const std::string& where) {
  const std::size_t kept = context.find_last_not_of(' ') + 1;
  if (kept < context.size()) {
    continuation = context.substr(kept) + continuation;
    context.resize(kept);
  }
  std::vector<int64_t> context_ids = tokenizer.encode(context, bos, false);
  const std::vector<int64_t> whole = tokenizer.encode(context + continuation, bos, false);
  QF_CHECK(whole.size() > context_ids.size(),
           fmt::format("{}: the continuation '{}' adds no token to its context", where, continuation));
  std::vector<int64_t> continuation_ids(whole.begin() + static_cast<std::ptrdiff_t>(context_ids.size()), whole.end());
  const int64_t total = static_cast<int64_t>(context_ids.size() + continuation_ids.size());
  if (total > window + 1) {
    const int64_t cut = total - (window + 1);
    QF_CHECK(cut < static_cast<int64_t>(context_ids.size()),
             fmt::format("{}: the continuation has {} tokens, more than the model's context of {}", where,
                         continuation_ids.size(), window));
    context_ids.erase(context_ids.begin(), context_ids.begin() + cut);
  }
  return {std::move(context_ids), std::move(continuation_ids)};
}

void finish_multiple_choice(const TaskSpec& spec, const TaskItem& item, ItemRecord& record) {
  record.prediction = argmax(record.loglikelihoods);
  record.values["acc"] = record.prediction == item.gold ? 1.0 : 0.0;
  if (spec.reports_acc_norm) {
    std::vector<double> normalized(record.loglikelihoods.size());
    for (std::size_t c = 0; c < normalized.size(); ++c)
      normalized[c] = record.loglikelihoods[c] / characters(item.choices[c]);
    record.prediction_norm = argmax(normalized);
    record.values["acc_norm"] = record.prediction_norm == item.gold ? 1.0 : 0.0;
  }
}

void score_multiple_choice(model::CausalLM& model, const tok::Tokenizer& tokenizer, const Task& task,
                           const TaskRunOptions& options, dist::Communicator& dp, std::vector<ItemRecord>& records) {
  const int64_t window = model.config().max_positions;
  std::vector<LoglikelihoodRequest> requests;
  struct Place {
    std::size_t request, continuation;
  };
  std::vector<std::vector<Place>> places(task.items.size());
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    const TaskItem& item = task.items[i];
    QF_CHECK(item.gold >= 0 && item.gold < static_cast<int>(item.choice_count()),
             fmt::format("{} item {}: gold {} is not one of its {} choices", task.spec.name, item.index, item.gold,
                         item.choice_count()));
    // Choices whose (cut) contexts tokenize alike share one request: the context is run once.
    const std::size_t first_request = requests.size();
    for (std::size_t c = 0; c < item.choice_count(); ++c) {
      records[i].arguments.emplace_back(item.context(c), item.continuation(c));
      auto [context, continuation] =
          encode_pair(tokenizer, item.context(c), item.continuation(c), options.add_bos, window,
                      fmt::format("{} item {} choice {}", task.spec.name, item.index, c));
      std::size_t r = first_request;
      while (r < requests.size() && requests[r].context != context) ++r;
      if (r == requests.size()) requests.push_back({std::move(context), {}});
      places[i].push_back({r, requests[r].continuations.size()});
      requests[r].continuations.push_back(std::move(continuation));
    }
  }
  const auto scores = score_continuations(model, requests, options.batch_size, dp, task.spec.name);
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    for (const Place& p : places[i]) {
      records[i].loglikelihoods.push_back(scores[p.request][p.continuation].loglikelihood);
      records[i].greedy.push_back(scores[p.request][p.continuation].greedy);
    }
    finish_multiple_choice(task.spec, task.items[i], records[i]);
  }
}

void generate_answers(model::CausalLM& model, const tok::Tokenizer& tokenizer, const Task& task,
                      const TaskRunOptions& options, dist::Communicator& dp, std::vector<ItemRecord>& records) {
  const int64_t window = model.config().max_positions;
  const int64_t new_tokens = std::min(task.spec.max_gen_tokens, window - 1);
  std::vector<std::vector<int64_t>> prompts;
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    std::vector<int64_t> prompt = tokenizer.encode(task.items[i].contexts.at(0), options.add_bos, false);
    const int64_t room = window - new_tokens;  // the harness keeps the prompt's last max_length - max_gen_toks
    if (static_cast<int64_t>(prompt.size()) > room) prompt.erase(prompt.begin(), prompt.end() - room);
    prompts.push_back(std::move(prompt));
    records[i].arguments.emplace_back(task.items[i].contexts.at(0), "");
  }
  auto stopped = [&](const std::vector<int64_t>& tokens) {
    const std::string text = tokenizer.decode(tokens);
    for (const std::string& stop : task.spec.until)
      if (text.find(stop) != std::string::npos) return true;
    return false;
  };
  const auto outputs = generate_until(model, prompts, new_tokens, stopped, options.batch_size, dp, task.spec.name);
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    ItemRecord& record = records[i];
    record.generated = tokenizer.decode(outputs[i]);
    record.filtered = cut_at_stops(record.generated, task.spec.until);
    const std::string said = normalize_answer(record.filtered);
    bool match = false;
    for (const std::string& answer : task.items[i].answers) match = match || normalize_answer(answer) == said;
    record.values["exact_match"] = match ? 1.0 : 0.0;
  }
}

// The harness's pooled standard error of a group whose figure is the size-weighted mean of its subtasks'.
double pooled_stderr(const std::vector<double>& stderrs, const std::vector<double>& sizes) {
  double variance = 0, total = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    variance += (sizes[i] - 1) * stderrs[i] * stderrs[i] * sizes[i];
    total += sizes[i];
  }
  return std::sqrt(variance / (total - static_cast<double>(sizes.size())) / total);
}

}  // namespace

Metric mean_with_stderr(const std::vector<double>& values) {
  Metric m;
  const double n = static_cast<double>(values.size());
  if (values.empty()) return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
  for (double v : values) m.value += v;
  m.value /= n;
  if (values.size() < 2) {
    m.stderr_ = std::numeric_limits<double>::quiet_NaN();
    return m;
  }
  double squares = 0;
  for (double v : values) squares += (v - m.value) * (v - m.value);
  m.stderr_ = std::sqrt(squares / (n - 1)) / std::sqrt(n);
  return m;
}

TaskResult run_task(model::CausalLM& model, const tok::Tokenizer& tokenizer, const Task& task,
                    const TaskRunOptions& options, dist::Communicator& dp) {
  const auto start = std::chrono::steady_clock::now();
  TaskResult result;
  result.name = task.spec.name;
  result.items.resize(task.items.size());
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    result.items[i].index = task.items[i].index;
    result.items[i].subject = task.items[i].subject;
    result.items[i].gold = task.items[i].gold;
  }
  if (task.spec.kind == TaskKind::kMultipleChoice)
    score_multiple_choice(model, tokenizer, task, options, dp, result.items);
  else
    generate_answers(model, tokenizer, task, options, dp, result.items);

  std::map<std::string, std::vector<double>> all;
  std::map<std::string, std::map<std::string, std::vector<double>>> by_subject;
  for (const ItemRecord& item : result.items) {
    for (const auto& [metric, value] : item.values) {
      all[metric].push_back(value);
      if (!item.subject.empty()) by_subject[item.subject][metric].push_back(value);
    }
  }
  for (const auto& [metric, values] : all) result.metrics[metric] = mean_with_stderr(values);
  if (!by_subject.empty()) {  // the harness's group: subjects weighted by their size, pooled standard error
    for (const auto& [subject, metrics] : by_subject) {
      for (const auto& [metric, values] : metrics) result.subjects[subject][metric] = mean_with_stderr(values);
      result.subject_items[subject] = static_cast<int64_t>(metrics.begin()->second.size());
    }
    for (auto& [metric, m] : result.metrics) {
      std::vector<double> stderrs, sizes;
      for (const auto& [subject, metrics] : result.subjects) {
        stderrs.push_back(metrics.at(metric).stderr_);
        sizes.push_back(static_cast<double>(result.subject_items.at(subject)));
      }
      m.stderr_ = pooled_stderr(stderrs, sizes);
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

nlohmann::json sample_json(const TaskSpec& spec, const TaskItem& task_item, const ItemRecord& item) {
  nlohmann::json line = {{"doc_id", item.index}};
  if (!item.subject.empty()) line["subject"] = item.subject;
  nlohmann::json arguments = nlohmann::json::array();
  for (const auto& [context, continuation] : item.arguments) {
    if (spec.kind == TaskKind::kGenerateUntil)
      arguments.push_back({context, {{"until", spec.until}, {"do_sample", false}}});
    else
      arguments.push_back({context, continuation});
  }
  line["arguments"] = arguments;
  if (spec.kind == TaskKind::kMultipleChoice) {
    nlohmann::json responses = nlohmann::json::array();
    for (std::size_t c = 0; c < item.loglikelihoods.size(); ++c)
      responses.push_back({item.loglikelihoods[c], static_cast<bool>(item.greedy[c])});
    line["resps"] = responses;
    line["target"] = item.gold;
    line["prediction"] = item.prediction;
    if (item.prediction_norm >= 0) line["prediction_norm"] = item.prediction_norm;
  } else {
    line["resps"] = {item.generated};
    line["filtered_resps"] = {item.filtered};
    line["target"] = task_item.answers;
  }
  for (const auto& [metric, value] : item.values) line[metric] = value;
  return line;
}

}  // namespace qforge::eval
