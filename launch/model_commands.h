#pragma once

#include "launch/commands.h"

#include <vector>

#include "distill/corpus_teacher.h"
#include "framework/common/atomic_file.h"
#include "framework/model/transformer.h"
#include "framework/tokenizer/tokenizer.h"

#include <memory>
#include <string>

namespace qforge {
// convert, eval, generate-text, generate.
std::vector<Command> model_commands();

// The tokenizer of model.tokenizer, else the model directory's tokenizer.model, tokenizer.bin, tokenizer.json or
// vocab.json (with merges.txt beside it): tok::tokenizer_in_directory.
std::string tokenizer_path(const ModelSettings& model);
// How a corpus records the teacher model.path is (distill/corpus_teacher.h): `model`'s config, the checkpoint's
// fingerprint and the tokenizer's file name and kind.
distill::TeacherIdentity teacher_identity(const ModelSettings& settings, const model::CausalLM& model);
// model.path loaded over the grid's TP group with model.dtype on model.device.
std::shared_ptr<model::CausalLM> load_model(const CommandContext& context, dist::Grid& grid);

// Bytes of the checkpoint's weight files in `dir` as stored (*.safetensors, pytorch_model*.bin); their names, sorted,
// into `files` when given.
int64_t weight_file_bytes(const std::string& dir, std::vector<std::string>* files = nullptr);

// Copies the model's tokenizer (tokenizer_path; a vocab.json with its merges.txt) into `dir`, beside a checkpoint a
// command wrote there.
void copy_tokenizer(const ModelSettings& model, const std::string& dir);

// The tokenizer of `settings` (tokenizer_path) for a model of `config`: a tokenizer with more pieces than the
// model's vocabulary is refused, naming both files and both sizes.
std::unique_ptr<tok::Tokenizer> load_model_tokenizer(const ModelSettings& settings, const model::ModelConfig& config);

// output.dir written as a whole: while it lives, write_outputs and the command's writers (dir()) write into a
// sibling temporary (AtomicDirectory, created by rank 0), which commit() renames to output.dir once everything is
// written; a failure leaves no output.dir that looks finished. Nothing when output.dir is empty. commit() is
// collective (a barrier first).
class StagedOutput {
 public:
  explicit StagedOutput(CommandContext& context);
  ~StagedOutput();
  const std::string& dir() const;
  void commit();

 private:
  CommandContext& context_;
  std::unique_ptr<AtomicDirectory> stage_;
};

// `value`, or a UsageError naming the config key and its command-line option when it is empty.
const std::string& required_setting(const std::string& value, const char* key, const char* option);
// Rank 0 writes output.dir/`name` (or the StagedOutput's temporary) and the resolved config beside it (nothing
// when output.dir is empty).
void write_outputs(const CommandContext& context, const std::string& name, const std::string& contents);

// The LLM-QAT fake quantizers of quant.bits, when any part is below 16 bits (eval ppl, eval tasks).
void attach_eval_quantizers(const QforgeConfig& c, model::CausalLM& model);

int run_eval(CommandContext& context);         // eval ppl or eval tasks (the first positional)
int run_eval_tasks(CommandContext& context);   // eval_command.cpp
int run_generate(CommandContext& context);     // generate_command.cpp
int run_show_corpus(CommandContext& context);  // generate_command.cpp
int run_qat(CommandContext& context);          // qat_command.cpp
int run_ptq(CommandContext& context);          // ptq_command.cpp
int run_pretrain(CommandContext& context);     // pretrain_command.cpp

// LLaMA's MLP width for a hidden size: hidden * 8 / 3 rounded up to 16 (init-model's and pretrain's default).
int64_t llama_mlp_width(int64_t hidden);
}  // namespace qforge
