// qforge generate: the teacher writes a synthetic corpus (LLM-QAT stage 1).
// Each DP group leader appends finished samples to a journal of its own under
// <output>.parts/; a restarted job reads the journals and decodes again only
// the groups that miss samples (a sample's tokens are a function of its group:
// the same every time); when all are done, rank 0 joins them into the HDF5
// corpus (docs/corpus.md).
#include "launch/model_commands.h"

#include "distill/corpus_generator.h"
#include "framework/common/error.h"
#include "framework/common/file_lock.h"
#include "framework/io/corpus.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/system/version.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

namespace qforge {
namespace fs = std::filesystem;
namespace {

io::CorpusIdentity corpus_identity(const QforgeConfig& c, const model::CausalLM& teacher, int64_t num_samples) {
  io::CorpusIdentity identity;
  identity.num_samples = num_samples;
  identity.seq_len = c.generate.seq_len;
  identity.vocab_size = teacher.config().vocab_size;
  identity.topk = c.generate.store_topk;
  identity.attributes = distill::teacher_attributes(teacher_identity(c.model, teacher));
  identity.attributes["generation"] = c.generate.identity();
  // The TP size sets the order of the teacher's partial sums, so a resumed run
  // keeps it (DP does not matter).
  identity.attributes["generation"]["tp"] = c.parallel.tp;
  identity.attributes["qforge_version"] = version();
  return identity;
}

// Runs `step` on rank 0 alone; when it fails there, every rank throws (rank 0
// its own message, the others a pointer to it), so the job ends through the
// usual failure agreement instead of waiting. Collective.
void on_rank0(dist::Runtime& runtime, const std::function<void()>& step) {
  std::string error;
  int code = 0;
  if (runtime.rank() == 0) {
    try {
      step();
    } catch (const UsageError& e) {
      error = e.what(), code = 2;
    } catch (const std::exception& e) {
      error = e.what(), code = 1;
    }
  }
  torch::Tensor failed = torch::tensor({code}, torch::kInt32);
  runtime.world().broadcast(failed, 0);
  code = failed.item<int>();
  if (code == 0) return;
  const std::string message = runtime.rank() == 0 ? error : "rank 0 failed (its error is reported)";
  if (code == 2) throw UsageError(message);
  throw Error(message);
}

// Which samples the journals already hold, as read by rank 0 and broadcast: one
// flag per sample.
std::vector<uint8_t> samples_done(dist::Runtime& runtime, const std::string& parts,
                                  const io::CorpusIdentity& identity) {
  torch::Tensor done = torch::zeros({identity.num_samples}, torch::kUInt8);
  on_rank0(runtime, [&] {
    io::JournalContents contents = io::read_corpus_journals(parts, identity);
    for (const auto& [index, tokens] : contents.samples) done[index] = 1;
    if (!contents.samples.empty())
      log::info("resuming: {} of {} samples already in {} journal(s) under {}{}", contents.samples.size(),
                identity.num_samples, contents.journals, parts,
                contents.torn_records ? fmt::format(" ({} torn record(s) dropped)", contents.torn_records) : "");
  });
  runtime.world().broadcast(done, 0);
  return std::vector<uint8_t>(done.data_ptr<uint8_t>(), done.data_ptr<uint8_t>() + done.numel());
}

std::string journal_name(const std::string& parts, const dist::Grid& grid) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return (fs::path(parts) / fmt::format("dp{}-{}-{}.qfcj", grid.dp_rank(), ::getpid(),
                                        std::chrono::duration_cast<std::chrono::milliseconds>(now).count()))
      .string();
}

// Decodes this DP group's share of the unfinished groups (every dp-th); its TP
// rank 0 journals the samples the journals lack. The journal is created with
// its first sample: a run that writes none leaves none.
void generate_share(model::CausalLM& teacher, const distill::CorpusSchedule& schedule, const std::vector<uint8_t>& done,
                    dist::Grid& grid, const std::string& parts, const io::CorpusIdentity& identity) {
  const distill::CorpusSettings& s = schedule.settings();
  const std::vector<int64_t> unfinished = schedule.unfinished_groups(done);
  std::vector<int64_t> mine;
  int64_t missing = 0;
  for (size_t k = grid.dp_rank(); k < unfinished.size(); k += grid.dp()) {
    mine.push_back(unfinished[k]);
    for (int64_t i : schedule.group(unfinished[k])) missing += done[i] ? 0 : 1;
  }
  log::info(
      "generate: {} samples of up to {} tokens on {}, in groups of {}; "
      "DP group 0 decodes {} group(s) for {} "
      "missing sample(s)",
      schedule.num_samples(), s.seq_len, grid.describe(), s.batch_size, mine.size(), missing);
  std::unique_ptr<io::CorpusJournalWriter> journal;
  log::Progress progress("generate (DP group 0)", missing, "samples", 10.0);
  int64_t tokens = 0, since_flush = 0;
  const auto start = std::chrono::steady_clock::now();
  auto on_sample = [&](const io::CorpusSample& sample) {
    if (grid.tp_rank() == 0) {
      if (!journal) journal = std::make_unique<io::CorpusJournalWriter>(journal_name(parts, grid), identity);
      journal->append(sample);
      if (++since_flush >= s.flush_every) journal->flush(), since_flush = 0;
    }
    tokens += static_cast<int64_t>(sample.tokens.size());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.set_detail(fmt::format("{} tokens, {:.0f} tokens/s", tokens, tokens / std::max(seconds, 1e-9)));
    progress.advance();
  };
  distill::generate_groups(teacher, schedule, mine, on_sample, [&](int64_t index) { return !done[index]; });
  if (journal) journal->flush();
}

}  // namespace

int run_generate(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const distill::CorpusSettings& s = c.generate;
  if (c.model.path.empty()) throw UsageError("model.path is required (config key model.path, or --model)");
  if (s.output.empty())
    throw UsageError(
        "generate.output is required (config key generate.output, "
        "or --output)");
  dist::Runtime& runtime = context.runtime;
  dist::Grid grid(runtime, c.parallel.tp);
  auto teacher = load_model(context, grid);
  const distill::CorpusSchedule schedule(s, teacher->config().vocab_size);
  distill::check_settings(s, teacher->config());
  const io::CorpusIdentity identity = corpus_identity(c, *teacher, schedule.num_samples());
  if (fs::exists(s.output))
    throw UsageError(fmt::format("{} exists; remove it or choose another generate.output", s.output));

  // Nothing is written before the settings are checked; then rank 0 holds the
  // output's lock until the end.
  const std::string parts = s.output + ".parts";
  std::unique_ptr<FileLock> lock;
  on_rank0(runtime, [&] {
    fs::create_directories(parts);
    lock = std::make_unique<FileLock>((fs::path(parts) / ".lock").string(), fmt::format("'{}'", s.output));
  });
  const std::vector<uint8_t> done = samples_done(runtime, parts, identity);
  generate_share(*teacher, schedule, done, grid, parts, identity);
  runtime.world().barrier();

  on_rank0(runtime, [&] {
    io::JournalContents contents = io::read_corpus_journals(parts, identity);
    io::write_corpus_file(s.output, identity, contents.samples, contents.topk);
    fs::remove_all(parts);
    config::save_resolved(config::to_yaml(c), fs::absolute(s.output).parent_path().string());
    log::info("wrote {} ({} samples)", s.output, contents.samples.size());
  });
  return 0;
}

int run_show_corpus(CommandContext& context) {
  const std::string path = context.line.options.count("corpus") ? context.line.options.at("corpus") : "";
  if (path.empty()) throw UsageError("qforge show-corpus: --corpus is required");
  const int64_t count = context.line.options.count("count") ? std::stoll(context.line.options.at("count")) : 3;
  if (context.runtime.rank() != 0) return 0;
  io::CorpusReader reader(path);
  auto tokenizer = tok::load_tokenizer(tokenizer_path(context.config.model));
  reader.check_vocabulary(tokenizer->vocab_size());
  std::printf(
      "%s: %lld samples of up to %lld tokens, vocabulary %lld, teacher "
      "top-K %lld\n",
      path.c_str(), static_cast<long long>(reader.num_samples()), static_cast<long long>(reader.seq_len()),
      static_cast<long long>(reader.vocab_size()), static_cast<long long>(reader.topk()));
  for (int64_t i = 0; i < std::min(count, reader.num_samples()); ++i) {
    auto [tokens, lengths] = reader.batch({i});
    const int64_t length = lengths[0].item<int64_t>();
    std::vector<int64_t> ids(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + length);
    std::printf("--- sample %lld (%lld tokens)\n%s\n", static_cast<long long>(i), static_cast<long long>(length),
                tokenizer->decode(ids).c_str());
  }
  return 0;
}

}  // namespace qforge
