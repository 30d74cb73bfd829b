// qforge qat: quantization-aware training with knowledge distillation (LLM-QAT stage 2). The student is the
// teacher's checkpoint with fake quantizers attached (quant section); it learns the teacher's soft labels on the
// generated corpus (distill section) under the trainer (train section). Outputs under output.dir: checkpoints/,
// student/ (Hugging Face safetensors of the fake-quantized weights, loadable by every qforge command), gptq/
// (the GPTQ checkpoint format: codes, fp16 scales; weights of 2, 3, 4 or 8 bits) and qat.json.
#include "launch/model_commands.h"

#include "distill/corpus_teacher.h"
#include "distill/distillation.h"
#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/io/corpus.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/train/trainer.h"
#include "quant/qat.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace qforge {
namespace fs = std::filesystem;
namespace {

int64_t directory_bytes(const fs::path& dir) {
  int64_t bytes = 0;
  if (!fs::exists(dir)) return 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) bytes += static_cast<int64_t>(entry.file_size());
  return bytes;
}

std::string gigabytes(int64_t bytes) { return fmt::format("{:.6f} GB", static_cast<double>(bytes) / 1e9); }

void freeze(model::CausalLM& model) {
  for (auto& p : model.parameters()) p.requires_grad_(false);
}

// Whether the student's weights go into a GPTQ checkpoint: quantized, at a width the format packs.
bool gptq_packable(const quant::QuantSettings& settings) {
  const int bits = settings.weight_spec().bits;
  return settings.weight_spec().enabled() && (bits == 2 || bits == 3 || bits == 4 || bits == 8);
}

// The student's exports, written by DP group 0: its weights in the GPTQ checkpoint format (the grids taken from the
// trained weights, which are then replaced by their fake-quantized values and packed), and the fake-quantized
// student as an ordinary Hugging Face checkpoint (its activation and KV quantizers are not part of either file).
nlohmann::json export_student(CommandContext& context, model::CausalLM& student, dist::Grid& grid) {
  const QforgeConfig& c = context.config;
  const fs::path out = c.output.dir;
  const bool writer = grid.dp_rank() == 0;
  const bool gptq = gptq_packable(c.quant);
  const quant::GptqExport grids = gptq ? quant::qat_gptq_export(student, c.quant) : quant::GptqExport{};
  quant::bake_weight_quantizers(student);
  quant::GptqExportReport exported;
  // Each export appears under its name once complete (a full disk leaves no student/ that looks finished).
  const bool owner = context.runtime.rank() == 0;
  AtomicDirectory student_dir((out / "student").string(), owner), gptq_dir((out / "gptq").string(), owner && gptq);
  if (gptq) exported = quant::export_gptq(student, grids, gptq_dir.temp_path(), writer, c.output.max_shard_bytes());
  model::save_pretrained(student, student_dir.temp_path(), writer, c.output.max_shard_bytes());
  if (owner) {
    copy_tokenizer(c.model, student_dir.temp_path());
    if (gptq) copy_tokenizer(c.model, gptq_dir.temp_path());
  }
  context.runtime.world().barrier();
  if (gptq) gptq_dir.commit();
  student_dir.commit();
  const int64_t teacher_bytes = directory_bytes(c.model.path);
  const int64_t student_bytes = directory_bytes(out / "student");
  const int64_t gptq_bytes = directory_bytes(out / "gptq");
  std::string table = fmt::format(
      "model size\n  teacher (full precision)        {:>14}  {}\n  student, fake-quantized weights {:>14}  {}\n",
      teacher_bytes, gigabytes(teacher_bytes), student_bytes, gigabytes(student_bytes));
  if (gptq)
    table += fmt::format("  student, GPTQ format ({})   {:>14}  {}\n", exported.checkpoint_format, gptq_bytes,
                         gigabytes(gptq_bytes));
  if (context.runtime.rank() == 0) std::fputs(table.c_str(), stdout);
  nlohmann::json sizes = {{"teacher_bytes", teacher_bytes}, {"student_bytes", student_bytes}};
  if (gptq) sizes["gptq_bytes"] = gptq_bytes;
  return sizes;
}

// Before any training: output.dir must be writable (a probe file is created and removed), and a finished run's
// directory (qat.json, student/ or gptq/ in it) is not overwritten unless --resume continues it. UsageError.
void check_output_dir(const std::string& dir, bool resume) {
  if (!resume)
    for (const char* finished : {"qat.json", "student", "gptq"})
      if (fs::exists(fs::path(dir) / finished))
        throw UsageError(fmt::format("output.dir {} holds a finished qat run ({}); choose another --output, remove "
                                     "it, or pass --resume to continue it", dir, finished));
  std::error_code error;
  fs::create_directories(dir, error);
  const fs::path probe = fs::path(dir) / fmt::format(".qforge-write-test.{}", ::getpid());
  std::FILE* file = error ? nullptr : std::fopen(probe.c_str(), "wb");
  const std::string reason = error ? error.message() : std::strerror(errno);
  if (!file)
    throw UsageError(fmt::format("output.dir {} is not writable ({}); choose another --output", dir, reason));
  std::fclose(file);
  fs::remove(probe, error);
}

// What a resumed run must share with its checkpoint beyond the trainer's own keys: the student's quantizers, the
// model it starts from (and distils from) and how it distils.
nlohmann::json run_fingerprint(const QforgeConfig& c, const distill::TeacherIdentity& teacher) {
  nlohmann::json fingerprint = {{"model.checksum", teacher.checksum},
                                {"model.config", hex64(fnv1a64(teacher.config.dump()))},
                                {"model.dtype", c.model.dtype},
                                {"distill.teacher", c.distill.teacher},
                                {"distill.temperature", c.distill.temperature}};
  train::add_settings(fingerprint, "quant", c.quant);
  return fingerprint;
}

}  // namespace

int run_qat(CommandContext& context) {
  const QforgeConfig& c = context.config;
  required_setting(c.model.path, "model.path", "model");
  required_setting(c.distill.corpus, "distill.corpus", "corpus");
  required_setting(c.output.dir, "output.dir", "output");
  check_output_dir(c.output.dir, context.line.options.count("resume") != 0);
  dist::Grid grid(context.runtime, c.parallel.tp);
  io::CorpusReader corpus(c.distill.corpus);
  if (c.quant.weight_spec().enabled() && !gptq_packable(c.quant))
    log::warn("quant.bits {}: the GPTQ checkpoint format packs 2, 3, 4 or 8-bit weights; the student is saved "
              "fake-quantized only (output.dir/student), with no gptq/ export", c.quant.bits);

  auto student = load_model(context, grid);
  const distill::TeacherIdentity teacher_id = teacher_identity(c.model, *student);  // --model is the teacher
  distill::check_corpus_teacher(corpus, teacher_id);
  corpus.check_vocabulary(student->config().vocab_size);
  const quant::AttachReport attached = quant::attach_quantizers(*student, c.quant);
  log::info("student: W-A-KV {} on {} linear layers and {} attention layers ({})", c.quant.bits,
            attached.quantized_linears, attached.attention_layers, grid.describe());
  std::shared_ptr<model::CausalLM> teacher;
  if (c.distill.teacher == "model") {
    teacher = load_model(context, grid);
    freeze(*teacher);
  }

  train::Trainer trainer(c.train, *student, grid.dp_group(), corpus, distill::distilled_tokens,
                         (fs::path(c.output.dir) / "checkpoints").string(), config::to_yaml(c),
                         run_fingerprint(c, teacher_id));
  if (context.line.options.count("resume")) trainer.resume();
  log::info("qat: {} steps of {} samples ({} epoch(s) of {}), teacher from {}", trainer.total_steps(),
            c.train.global_batch, c.train.epochs, corpus.path(), c.distill.teacher);
  const train::TrainResult result = trainer.run(distill::distillation_step(*student, teacher.get(), corpus, c.distill));
  if (result.stopped) {
    log::warn("qat stopped by a signal after step {} of {}; the checkpoint is saved: rerun with --resume",
              result.steps_done, result.total_steps);
    return 0;
  }
  nlohmann::json report = {{"steps", result.steps_done}, {"final_loss", result.last_loss}, {"bits", c.quant.bits}};
  if (!result.losses.empty()) report["first_loss"] = result.losses.front();  // of this run (not of a resumed one)
  // The losses of the last steps, resumed ones included: every step's unless QAT resumed from a checkpoint saved
  // before the trainer kept them (the pipeline's report plots them at their steps, from steps - size + 1).
  report["losses"] = result.history;
  report["sizes"] = export_student(context, *student, grid);
  if (context.runtime.rank() == 0)
    std::printf("qat: %lld steps, distillation loss %.4f -> %.4f; student in %s\n",
                static_cast<long long>(result.steps_done),
                result.losses.empty() ? result.last_loss : result.losses.front(), result.last_loss,
                (fs::path(c.output.dir) / "student").c_str());
  write_outputs(context, "qat.json", report.dump(2) + "\n");
  return 0;
}

}  // namespace qforge
