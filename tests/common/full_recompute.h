// The reference for the inference tests: the training model's own full forward (its embedding, attention and head
// kernels) over the whole sequence, recomputed from scratch for every token. Independent of the ragged engine,
// the paged cache and the schedulers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "ds/core/rng.h"
#include "ds/nn/models/gpt2.h"

namespace ds::testing {

// n token ids drawn uniformly from [0, V).
inline std::vector<int32_t> random_tokens(Rng& rng, int n, int V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(V));
  return t;
}

// The greedy choice of a logit row (the lowest id among equal maxima).
inline int32_t argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

// Logits after the last token of `tokens`.
inline std::vector<float> full_recompute_last_logits(nn::Gpt2& model, const std::vector<int32_t>& tokens) {
  const int T = static_cast<int>(tokens.size());
  const int V = model.config().vocab_size;
  std::vector<float> all(static_cast<size_t>(T) * V);
  nn::Ctx ctx;
  model.forward_logits(ctx, tokens.data(), 1, T, all.data());
  return std::vector<float>(all.end() - V, all.end());
}

// n greedy tokens after `tokens` (the lowest id among equal maxima).
inline std::vector<int32_t> full_recompute_greedy(nn::Gpt2& model, std::vector<int32_t> tokens, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const std::vector<float> l = full_recompute_last_logits(model, tokens);
    out.push_back(static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()));
    tokens.push_back(out.back());
  }
  return out;
}

}  // namespace ds::testing
