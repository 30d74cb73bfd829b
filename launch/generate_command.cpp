// qforge generate: the teacher writes a synthetic corpus (LLM-QAT stage 1). Each DP group leader appends finished
// samples to a journal of its own under <output>.parts/; a restarted job reads the journals and generates only the
// missing samples; when all are done, rank 0 joins them into the HDF5 corpus (docs/corpus.md).
#include "launch/model_commands.h"

#include "distill/corpus_generator.h"
#include "framework/common/error.h"
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
  identity.attributes["qforge_version"] = version();
  return identity;
}

// Which samples the journals already hold, as read by rank 0 and broadcast: [N] uint8.
torch::Tensor samples_done(dist::Runtime& runtime, const std::string& parts, const io::CorpusIdentity& identity) {
  torch::Tensor done = torch::zeros({identity.num_samples}, torch::kUInt8);
  std::string error;
  if (runtime.rank() == 0 && fs::exists(parts)) {
    try {
      io::JournalContents contents = io::read_corpus_journals(parts, identity);
      for (const auto& [index, tokens] : contents.samples) done[index] = 1;
      log::info("resuming: {} of {} samples already in {} journal(s) under {}{}", contents.samples.size(),
                identity.num_samples, contents.journals, parts,
                contents.torn_records ? fmt::format(" ({} torn record(s) dropped)", contents.torn_records) : "");
    } catch (const Error& e) {
      error = e.what();
    }
  }
  torch::Tensor failed = torch::tensor({error.empty() ? 0 : 1}, torch::kInt32);
  runtime.world().broadcast(failed, 0);
  if (failed.item<int>()) throw UsageError(runtime.rank() == 0 ? error : "the corpus journals do not match this run");
  runtime.world().broadcast(done, 0);
  return done;
}

std::vector<int64_t> my_share(const torch::Tensor& done, dist::Grid& grid) {
  std::vector<int64_t> mine;
  int64_t missing = 0;
  auto flags = done.accessor<uint8_t, 1>();
  for (int64_t i = 0; i < done.numel(); ++i)
    if (!flags[i] && missing++ % grid.dp() == grid.dp_rank()) mine.push_back(i);
  return mine;
}

std::string journal_name(const std::string& parts, const dist::Grid& grid) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return (fs::path(parts) / fmt::format("dp{}-{}-{}.qfcj", grid.dp_rank(), ::getpid(),
                                        std::chrono::duration_cast<std::chrono::milliseconds>(now).count())).string();
}

// Generates this DP group's share; its TP rank 0 journals the samples.
void generate_share(model::CausalLM& teacher, const distill::CorpusSchedule& schedule, const distill::CorpusSettings& s,
                    const std::vector<int64_t>& mine, dist::Grid& grid, const std::string& parts,
                    const io::CorpusIdentity& identity) {
  std::unique_ptr<io::CorpusJournalWriter> journal;
  if (grid.tp_rank() == 0 && !mine.empty()) journal = std::make_unique<io::CorpusJournalWriter>(journal_name(parts, grid), identity);
  log::Progress progress("generate (DP group 0)", static_cast<int64_t>(mine.size()), "samples", 10.0);
  int64_t tokens = 0, since_flush = 0;
  const auto start = std::chrono::steady_clock::now();
  distill::generate_samples(teacher, schedule, s, mine, s.batch_size, [&](const io::CorpusSample& sample) {
    if (journal) {
      journal->append(sample);
      if (++since_flush >= s.flush_every) journal->flush(), since_flush = 0;
    }
    tokens += static_cast<int64_t>(sample.tokens.size());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.set_detail(fmt::format("{} tokens, {:.0f} tokens/s", tokens, tokens / std::max(seconds, 1e-9)));
    progress.advance();
  });
  if (journal) journal->flush();
}

}  // namespace

int run_generate(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const distill::CorpusSettings& s = c.generate;
  if (c.model.path.empty()) throw UsageError("model.path is required (config key model.path, or --model)");
  if (s.output.empty()) throw UsageError("generate.output is required (config key generate.output, or --output)");
  dist::Runtime& runtime = context.runtime;
  dist::Grid grid(runtime, c.parallel.tp);
  auto teacher = load_model(context, grid);
  distill::CorpusSchedule schedule(s, teacher->config().vocab_size);
  const io::CorpusIdentity identity = corpus_identity(c, *teacher, schedule.num_samples());
  if (fs::exists(s.output))
    throw UsageError(fmt::format("{} exists; remove it or choose another generate.output", s.output));

  const std::string parts = s.output + ".parts";
  if (runtime.rank() == 0) fs::create_directories(parts);
  runtime.world().barrier();
  const torch::Tensor done = samples_done(runtime, parts, identity);
  const std::vector<int64_t> mine = my_share(done, grid);
  log::info("generate: {} samples of up to {} tokens on {}; DP group 0 has {} to do", schedule.num_samples(), s.seq_len,
            grid.describe(), mine.size());
  generate_share(*teacher, schedule, s, mine, grid, parts, identity);
  runtime.world().barrier();

  if (runtime.rank() == 0) {
    io::JournalContents contents = io::read_corpus_journals(parts, identity);
    io::write_corpus_file(s.output, identity, contents.samples, contents.topk);
    fs::remove_all(parts);
    config::save_resolved(config::to_yaml(c), fs::absolute(s.output).parent_path().string());
    log::info("wrote {} ({} samples)", s.output, contents.samples.size());
  }
  runtime.world().barrier();
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
  std::printf("%s: %lld samples of up to %lld tokens, vocabulary %lld, teacher top-K %lld\n", path.c_str(),
              static_cast<long long>(reader.num_samples()), static_cast<long long>(reader.seq_len()),
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
