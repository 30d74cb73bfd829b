#include "framework/tokenizer/bpe.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <queue>

namespace qforge::tok {
namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

int hex_digit(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

struct Candidate {
  float score;
  int32_t left;  // position of the pair's left symbol; positions keep their order as symbols merge
  int32_t left_id;
  int32_t right_id;
  int32_t merged_id;
};

struct MergesLater {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

std::string read_tokenizer_file(const std::string& path) {
  check_input_file(path, "a tokenizer file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the tokenizer file ({})", path, std::strerror(errno)));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("{}: cannot read the tokenizer file ({})", path, std::strerror(errno)));
  return bytes;
}

int byte_of_piece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  const int high = hex_digit(piece[3]), low = hex_digit(piece[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

std::string byte_piece(int byte) { return fmt::format("<0x{:02X}>", byte); }

std::size_t utf8_char_length(char lead) {
  static constexpr std::size_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[static_cast<unsigned char>(lead) >> 4];
}

MergeTable::MergeTable(const PieceIds& ids, const std::vector<float>& scores,
                       const std::function<bool(int32_t)>& can_merge_into) {
  for (const auto& [whole, id] : ids) {
    if (!can_merge_into(id)) continue;
    for (std::size_t split = 0; split <= whole.size(); ++split) {
      auto left = ids.find(whole.substr(0, split));
      auto right = ids.find(whole.substr(split));
      if (left != ids.end() && right != ids.end())
        merges_.emplace(pair_key(left->second, right->second), Merge{id, scores[id]});
    }
  }
}

void MergeTable::add(int32_t left, int32_t right, Merge merge) {
  merges_.insert_or_assign(pair_key(left, right), merge);
}

const MergeTable::Merge* MergeTable::find(int32_t left, int32_t right) const {
  auto found = merges_.find(pair_key(left, right));
  return found == merges_.end() ? nullptr : &found->second;
}

// Rescanning the whole sequence for the best pair after every merge (run.c) is O(n^2). The same order comes from a
// priority queue over the adjacent pairs of a linked list, where a pair whose symbols have since changed is
// skipped when popped (SentencePiece's bpe_model.cc works the same way).
void merge_best_pairs(std::vector<int32_t>& symbols, const MergeTable& merges) {
  const auto count = static_cast<int32_t>(symbols.size());
  std::vector<int32_t> next(count), previous(count);
  for (int32_t i = 0; i < count; ++i) {
    next[i] = i + 1 < count ? i + 1 : -1;
    previous[i] = i - 1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, MergesLater> queue;
  auto consider = [&](int32_t left) {
    const int32_t right = next[left];
    if (right < 0 || symbols[left] < 0 || symbols[right] < 0) return;
    if (const MergeTable::Merge* merge = merges.find(symbols[left], symbols[right]))
      queue.push({merge->score, left, symbols[left], symbols[right], merge->id});
  };
  for (int32_t i = 0; i + 1 < count; ++i) consider(i);
  constexpr int32_t kMerged = -1;
  while (!queue.empty()) {
    const Candidate best = queue.top();
    queue.pop();
    const int32_t right = next[best.left];
    if (symbols[best.left] != best.left_id || right < 0 || symbols[right] != best.right_id) continue;
    symbols[best.left] = best.merged_id;
    symbols[right] = kMerged;
    next[best.left] = next[right];
    if (next[right] >= 0) previous[next[right]] = best.left;
    if (previous[best.left] >= 0) consider(previous[best.left]);
    consider(best.left);
  }
  symbols.erase(std::remove(symbols.begin(), symbols.end(), kMerged), symbols.end());
}

}  // namespace qforge::tok
