#include "launch/pipeline_report.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "launch/model_commands.h"
#include "launch/qforge_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

namespace qforge {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_json(const fs::path& path) {
  try {
    return json::parse(read_file(path.string()));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
  }
}

// The headline metric of each task in a results.json (lm-evaluation-harness layout): normalised accuracy, else
// accuracy, else exact match, else perplexity; subtasks (MMLU subjects) are left out.
json task_metrics(const json& results) {
  json metrics = json::object();
  for (const auto& [task, row] : results.items()) {
    if (row.value("alias", "").rfind(" - ", 0) == 0) continue;
    for (const char* metric : {"acc_norm,none", "acc,none", "exact_match,none", "perplexity,none"})
      if (row.contains(metric) && row[metric].is_number()) {
        metrics[task] = {{"metric", std::string(metric).substr(0, std::string(metric).find(','))},
                         {"value", row[metric]}};
        break;
      }
  }
  return metrics;
}

// The mean of a row's accuracy-like task metrics (acc, acc_norm, exact_match); NaN when it has none.
double mean_accuracy(const json& row) {
  double sum = 0;
  int count = 0;
  if (row.contains("tasks"))
    for (const auto& [task, m] : row["tasks"].items())
      if (m["metric"] != "perplexity") sum += m["value"].get<double>(), ++count;
  return count ? sum / count : NAN;
}

std::string number(const json& value, const char* format) {
  return value.is_number() ? fmt::format(fmt::runtime(format), value.get<double>()) : std::string("—");
}

// ---- SVG ----------------------------------------------------------------------------------------------------

constexpr int kWidth = 720, kHeight = 400, kLeft = 70, kRight = 170, kTop = 40, kBottom = 50;
const char* const kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};

std::string svg_open(const std::string& title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{3}</text>\n",
      kWidth, kHeight, kWidth / 2, title);
}

// Axes with five labelled ticks on y from `low` to `high`; returns the y coordinate of a value.
std::string svg_axes(double low, double high, const std::string& x_label, const std::string& y_label) {
  std::string svg;
  const int x1 = kWidth - kRight, y1 = kHeight - kBottom;
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\n", kLeft, kTop, y1);
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/>\n", kLeft, y1, x1);
  for (int i = 0; i <= 4; ++i) {
    const double value = low + (high - low) * i / 4.0;
    const double y = y1 - (y1 - kTop) * i / 4.0;
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>\n"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.3g}</text>\n",
        kLeft, y, x1, kLeft - 6, y + 4, value);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (kLeft + x1) / 2, kHeight - 12,
                     x_label);
  svg += fmt::format("<text x=\"16\" y=\"{0}\" transform=\"rotate(-90 16 {0})\" text-anchor=\"middle\">{1}</text>\n",
                     (kTop + y1) / 2, y_label);
  return svg;
}

double y_of(double value, double low, double high) {
  const double y1 = kHeight - kBottom;
  return y1 - (y1 - kTop) * (high > low ? (value - low) / (high - low) : 0.5);
}

std::string legend(int index, const std::string& text) {
  const int x = kWidth - kRight + 14, y = kTop + 18 * index;
  return fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>"
      "<text x=\"{}\" y=\"{}\">{}</text>\n",
      x, y, kColours[index % 7], x + 18, y + 10, text);
}

// The distillation loss per step, one line per W-A-KV setting, each loss at its step (`ranges`: the first and last
// step of each setting's losses; a run resumed from a checkpoint older than the loss history starts later).
std::string loss_plot(const json& losses, const json& ranges) {
  double low = INFINITY, high = -INFINITY;
  int64_t steps = 1;
  for (const auto& [bits, values] : losses.items()) {
    steps = std::max(steps, ranges.at(bits).at("last").get<int64_t>());
    for (const auto& v : values) low = std::min(low, v.get<double>()), high = std::max(high, v.get<double>());
  }
  if (!std::isfinite(low)) low = 0, high = 1;
  std::string svg = svg_open("QAT: distillation loss per step") + svg_axes(low, high, "step", "loss (nats/token)");
  const double x_span = kWidth - kRight - kLeft;
  int index = 0;
  for (const auto& [bits, values] : losses.items()) {
    const int64_t first = ranges.at(bits).at("first").get<int64_t>(), last = ranges.at(bits).at("last").get<int64_t>();
    std::string points;
    for (size_t i = 0; i < values.size(); ++i) {
      const double step = static_cast<double>(first) + static_cast<double>(i);
      points += fmt::format("{:.1f},{:.1f} ", kLeft + x_span * (steps > 1 ? (step - 1) / double(steps - 1) : 0.5),
                            y_of(values[i].get<double>(), low, high));
    }
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
                       kColours[index % 7], points);
    svg += legend(index++, first > last ? bits + " (none recorded)"
                           : first > 1  ? fmt::format("{} (from step {})", bits, first)
                                        : bits);
  }
  return svg + fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} steps</text>\n</svg>\n", kWidth - kRight,
                           kHeight - kBottom + 16, steps);
}

// One bar per row of `values` (label, value), coloured by the row's kind, with the value printed above it.
std::string bar_plot(const std::string& title, const std::string& y_label,
                     const std::vector<std::tuple<std::string, std::string, double>>& bars) {
  double high = 0;
  for (const auto& [label, kind, value] : bars) high = std::max(high, value);
  high = high > 0 ? high * 1.1 : 1;
  std::string svg = svg_open(title) + svg_axes(0, high, "", y_label);
  const double slot = double(kWidth - kRight - kLeft) / double(std::max<size_t>(bars.size(), 1));
  const std::vector<std::string> kinds = {"fp", "rtn", "qat", "ptq"};
  for (size_t i = 0; i < bars.size(); ++i) {
    const auto& [label, kind, value] = bars[i];
    const int colour = static_cast<int>(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin());
    const double x = kLeft + slot * i + slot * 0.15, y = y_of(value, 0, high);
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"/>\n", x, y,
                       slot * 0.7, kHeight - kBottom - y, kColours[colour % 7]);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.4g}</text>\n", x + slot * 0.35, y - 4,
                       value);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
                       x + slot * 0.35, kHeight - kBottom + 14, label);
  }
  const char* names[] = {"full precision", "RTN", "QAT", "PTQ"};
  for (int k = 0; k < 4; ++k) svg += legend(k, names[k]);
  return svg + "</svg>\n";
}

}  // namespace

ReportInputs report_inputs(const QforgeConfig& c, const std::vector<ReportUnit>& units) {
  ReportInputs inputs{c.model.path, c.pipeline.bits_list(), {}, {}, {}};
  const fs::path out = c.output.dir;
  std::string method = c.ptq.method;
  std::transform(method.begin(), method.end(), method.begin(), ::toupper);
  const std::map<std::string, std::string> labels = {
      {"fp", "FP (teacher)"}, {"rtn", "RTN"}, {"qat", "QAT"}, {"ptq", method}};
  std::map<std::string, int64_t> qat_bytes;  // setting -> the size of its export (its qat.json)
  for (const ReportUnit& unit : units) {
    auto at = std::find_if(inputs.stage_seconds.begin(), inputs.stage_seconds.end(),
                           [&](const auto& entry) { return entry.first == unit.stage; });
    if (at == inputs.stage_seconds.end()) at = inputs.stage_seconds.insert(at, {unit.stage, 0.0});
    at->second += unit.seconds;
    if (unit.stage == "qat") {
      const fs::path file = fs::path(unit.output) / "qat.json";
      const json qat = read_json(file);
      QatLosses losses{unit.bits, qat.at("steps").get<int64_t>(), qat.value("losses", std::vector<double>{})};
      if (static_cast<int64_t>(losses.losses.size()) > losses.steps)
        throw Error(fmt::format("{}: {} losses for {} steps", file.string(), losses.losses.size(), losses.steps));
      inputs.losses.push_back(std::move(losses));
      const json sizes = qat.at("sizes");
      qat_bytes[unit.bits] = sizes.value("gptq_bytes", sizes.value("student_bytes", int64_t{-1}));
    }
    if (unit.stage != "eval") continue;
    int64_t size = -1;
    if (unit.row == "fp") size = weight_file_bytes(c.model.path);
    if (unit.row == "qat") size = qat_bytes.at(unit.setting);  // its QAT unit came first
    if (unit.row == "ptq") {
      const json ptq = read_json(out / "ptq" / unit.setting / "ptq.json");
      size = ptq.contains("gptq_checkpoint") ? ptq["gptq_checkpoint"].value("bytes", int64_t{-1})
                                             : weight_file_bytes(unit.model);
    }
    inputs.rows.push_back({unit.row, labels.at(unit.row), unit.setting, unit.model, unit.output, size});
  }
  return inputs;
}

json build_report(const ReportInputs& inputs) {
  json rows = json::array();
  double fp_nll = NAN;
  std::map<std::string, double> rtn_nll;
  for (const ReportRow& r : inputs.rows) {
    json row = {{"kind", r.kind}, {"label", r.label}, {"bits", r.bits}, {"model", r.model}};
    row["size_bytes"] = r.size_bytes >= 0 ? json(r.size_bytes) : json();
    row["size_gb"] = r.size_bytes >= 0 ? json(static_cast<double>(r.size_bytes) / 1e9) : json();
    const fs::path dir = r.eval_dir;
    if (fs::exists(dir / "perplexity.json")) {
      const json p = read_json(dir / "perplexity.json");
      row["perplexity"] = {{"text", p.at("text")},
                           {"tokens", p.at("tokens")},
                           {"mean_nll", p.at("mean_nll")},
                           {"perplexity", p.at("perplexity")}};
      const double nll = p.at("mean_nll").get<double>();
      if (r.kind == "fp") fp_nll = nll;
      if (r.kind == "rtn") rtn_nll[r.bits] = nll;
    }
    if (fs::exists(dir / "results.json")) row["tasks"] = task_metrics(read_json(dir / "results.json").at("results"));
    rows.push_back(row);
  }
  // How much of the RTN -> full precision gap in mean NLL a row closes (QAT and PTQ against their setting's RTN).
  for (json& row : rows) {
    const std::string kind = row["kind"];
    if ((kind == "qat" || kind == "ptq") && row.contains("perplexity") && rtn_nll.count(row["bits"]) &&
        std::isfinite(fp_nll)) {
      const double rtn = rtn_nll[row["bits"]], gap = rtn - fp_nll;
      if (gap > 0) row["gap_closed"] = (rtn - row["perplexity"]["mean_nll"].get<double>()) / gap;
    }
  }
  json losses = json::object(), loss_steps = json::object();  // the steps of each setting's losses, first to last
  for (const QatLosses& q : inputs.losses) {
    losses[q.bits] = q.losses;
    loss_steps[q.bits] = {{"first", q.steps - static_cast<int64_t>(q.losses.size()) + 1}, {"last", q.steps}};
  }
  json seconds = json::array();  // in the order the stages ran
  for (const auto& [stage, s] : inputs.stage_seconds) seconds.push_back({{"stage", stage}, {"seconds", s}});
  json plots = {"plots/distill_loss.svg", "plots/quality.svg"};
  if (std::any_of(rows.begin(), rows.end(), [](const json& row) { return std::isfinite(mean_accuracy(row)); }))
    plots.push_back("plots/accuracy.svg");
  return {{"teacher", inputs.teacher},    {"settings", inputs.bits},  {"rows", rows},  {"qat_losses", losses},
          {"qat_loss_steps", loss_steps}, {"stage_seconds", seconds}, {"plots", plots}};
}

std::string report_markdown(const json& report) {
  std::vector<std::string> tasks;
  for (const json& row : report["rows"])
    if (row.contains("tasks"))
      for (const auto& [task, m] : row["tasks"].items())
        if (std::find(tasks.begin(), tasks.end(), task) == tasks.end()) tasks.push_back(task);
  std::string md = fmt::format("# qforge pipeline report\n\nTeacher `{}`; W-A-KV settings {}.\n\n",
                               report["teacher"].get<std::string>(), fmt::join(report["settings"], ", "));
  std::string text;
  for (const json& row : report["rows"])
    if (row.contains("perplexity")) text = row["perplexity"]["text"];
  if (!text.empty()) md += fmt::format("Perplexity of `{}`.\n\n", text);
  md += "| model | W-A-KV | perplexity | mean NLL | RTN→FP gap closed |";
  for (const std::string& task : tasks) md += " " + task + " |";
  md += " size (GB) |\n|---|---|---|---|---|";
  for (size_t i = 0; i < tasks.size(); ++i) md += "---|";
  md += "---|\n";
  for (const json& row : report["rows"]) {
    const json p = row.value("perplexity", json::object());
    md += fmt::format(
        "| {} | {} | {} | {} | {} |", row["label"].get<std::string>(), row["bits"].get<std::string>(),
        number(p.value("perplexity", json()), "{:.4f}"), number(p.value("mean_nll", json()), "{:.4f}"),
        row.contains("gap_closed") ? fmt::format("{:.1f}%", 100 * row["gap_closed"].get<double>()) : std::string(""));
    for (const std::string& task : tasks) {
      const json t = row.contains("tasks") ? row["tasks"].value(task, json()) : json();
      md += " " +
            (t.is_object() ? fmt::format("{} {:.4f}", t["metric"].get<std::string>(), t["value"].get<double>())
                           : std::string("—")) +
            " |";
    }
    md += " " + number(row["size_gb"], "{:.6f}") + " |\n";
  }
  md += "\n| stage | time (s) |\n|---|---|\n";
  for (const json& stage : report["stage_seconds"])
    md += fmt::format("| {} | {:.1f} |\n", stage["stage"].get<std::string>(), stage["seconds"].get<double>());
  for (const auto& [bits, range] : report["qat_loss_steps"].items()) {  // a resume from a checkpoint without them
    const int64_t first = range["first"], last = range["last"];
    if (first > last) md += fmt::format("\nQAT {}: no losses recorded.\n", bits);
    if (first > 1 && first <= last)
      md += fmt::format("\nQAT {}: losses of steps {} to {} only (earlier ones not recorded).\n", bits, first, last);
  }
  md += "\n![distillation loss per step](plots/distill_loss.svg)\n\n![perplexity per row](plots/quality.svg)\n";
  if (report["plots"].size() > 2) md += "\n![mean task accuracy per row](plots/accuracy.svg)\n";
  return md;
}

void write_report(const std::string& dir, const json& report) {
  std::vector<std::tuple<std::string, std::string, double>> bars, accuracy;
  for (const json& row : report["rows"]) {
    const std::string label = row["kind"] == "fp"
                                  ? std::string("FP")
                                  : row["label"].get<std::string>() + " " + row["bits"].get<std::string>();
    if (row.contains("perplexity"))
      bars.emplace_back(label, row["kind"], row["perplexity"]["perplexity"].get<double>());
    if (std::isfinite(mean_accuracy(row))) accuracy.emplace_back(label, row["kind"], mean_accuracy(row));
  }
  if (!accuracy.empty())
    write_file_atomically((fs::path(dir) / "plots" / "accuracy.svg").string(),
                          bar_plot("mean task accuracy per row (higher is better)", "accuracy", accuracy));
  write_file_atomically((fs::path(dir) / "plots" / "distill_loss.svg").string(),
                        loss_plot(report["qat_losses"], report["qat_loss_steps"]));
  write_file_atomically((fs::path(dir) / "plots" / "quality.svg").string(),
                        bar_plot("perplexity per row (lower is better)", "perplexity", bars));
  write_file_atomically((fs::path(dir) / "report.json").string(), report.dump(2) + "\n");
  write_file_atomically((fs::path(dir) / "report.md").string(), report_markdown(report));
}

}  // namespace qforge
