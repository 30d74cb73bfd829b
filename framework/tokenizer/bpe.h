// What the tokenizers share (internal to framework/tokenizer): reading a tokenizer file, byte pieces "<0xXX>", UTF-8
// character lengths, and the BPE merge loop, which merges, again and again, the adjacent pair whose concatenation is
// the highest-scored piece, the leftmost on ties. That is both llama2.c run.c's encode() and SentencePiece's BPE
// model; GPT-2's byte-level BPE is the same loop over explicit merges scored by minus their rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace qforge::tok {

// The whole of the tokenizer file `path`; a qforge::Error naming it when it cannot be read.
std::string read_tokenizer_file(const std::string& path);

// The byte "<0xXX>" (upper-case hex digits) stands for, or -1 when `piece` is not a byte piece.
int byte_of_piece(const std::string& piece);
// "<0xXX>" for `byte`.
std::string byte_piece(int byte);

// Bytes of the UTF-8 character starting with `lead`, from the lead byte alone (1 for a stray continuation byte).
std::size_t utf8_char_length(char lead);

using PieceIds = std::unordered_map<std::string, int32_t>;

// The merges a vocabulary allows: (left id, right id) -> the id and score of the piece the two concatenate to.
class MergeTable {
 public:
  struct Merge {
    int32_t id;
    float score;
  };

  // Every split of a piece of `ids` into two pieces of `ids` (an empty half included, as run.c would find it),
  // for the pieces `can_merge_into` accepts; `scores` is indexed by id.
  MergeTable(const PieceIds& ids, const std::vector<float>& scores, const std::function<bool(int32_t)>& can_merge_into);
  // No merges yet; add() gives them one by one (GPT-2's merges.txt lists its merges explicitly).
  MergeTable() = default;

  // (left, right) merges into `merge`; a later add() of the same pair replaces the earlier one.
  void add(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const;

 private:
  std::unordered_map<uint64_t, Merge> merges_;
};

// A symbol id that never merges (a negative id never appears in a MergeTable): callers put it where a symbol must
// stay as it is, and find it again in the same order after merging.
constexpr int32_t kHeldSymbol = -2;

// Merges `symbols` in place until no adjacent pair is in `merges`; the highest score first, the leftmost on ties.
void merge_best_pairs(std::vector<int32_t>& symbols, const MergeTable& merges);

}  // namespace qforge::tok
