// The ragged batch: the tokens of one forward pass, many sequences each with its own number of new tokens, laid
// out as plain arrays of plain structs (DeepSpeed's RaggedBatchWrapper) so a device kernel can take them as they
// are. Token i belongs to sequence token_to_seq[i]; sequence s owns tokens [start, start + n_tokens) of the batch,
// has seen_tokens tokens in the cache before this pass (so its new token j sits at position seen_tokens + j), and
// reads and writes its KV slots through its block table.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ds::inference {

struct RaggedSequence {
  int32_t start = 0;        // first token of the sequence in the batch
  int32_t n_tokens = 0;     // new tokens this pass
  int32_t seen_tokens = 0;  // tokens already in the cache
  int32_t n_blocks = 0;     // entries of its block table
  const int32_t* block_table = nullptr;
};

struct RaggedBatch {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> token_to_seq;
  std::vector<RaggedSequence> seqs;
  // Sequences whose every new token gets a row of logits (a prompt's log-probabilities, echo), not only the last;
  // empty when none does. The CPU forward honours it; a device forward refuses it.
  std::vector<uint8_t> all_logits;

  void clear() {
    input_ids.clear();
    token_to_seq.clear();
    seqs.clear();
    all_logits.clear();
  }
  bool wants_all_logits(int32_t s) const { return !all_logits.empty() && all_logits[static_cast<size_t>(s)] != 0; }
  // Appends a sequence's new tokens; block_table must stay valid until the pass is done.
  void add(std::span<const int32_t> tokens, int32_t seen_tokens, std::span<const int32_t> block_table) {
    const int32_t s = static_cast<int32_t>(seqs.size());
    seqs.push_back({static_cast<int32_t>(input_ids.size()), static_cast<int32_t>(tokens.size()), seen_tokens,
                    static_cast<int32_t>(block_table.size()), block_table.data()});
    input_ids.insert(input_ids.end(), tokens.begin(), tokens.end());
    token_to_seq.insert(token_to_seq.end(), tokens.size(), s);
  }
  int32_t n_tokens() const { return static_cast<int32_t>(input_ids.size()); }
  int32_t n_seqs() const { return static_cast<int32_t>(seqs.size()); }
};

}  // namespace ds::inference
