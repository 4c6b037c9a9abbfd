// The engine's checks and one ragged pass: can_schedule walks DeepSpeed's limits in DeepSpeed's order with a
// running count of free blocks, so a batch it accepts always reserves; put() refuses a batch before touching the
// KV state, then reserves, runs the model, and advances every sequence only after the forward has written it.
#include "ds/inference/engine.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "ds/core/error.h"

namespace ds::inference {

const char* schedule_status_name(ScheduleStatus s) {
  switch (s) {
    case ScheduleStatus::ok: return "ok";
    case ScheduleStatus::batch_sequence_limit: return "batch sequence limit exceeded";
    case ScheduleStatus::kv_cache_limit: return "KV cache limit exceeded";
    case ScheduleStatus::engine_sequence_limit: return "engine sequence limit exceeded";
    case ScheduleStatus::batch_token_limit: return "batch token limit exceeded";
  }
  return "?";
}

// The cache's geometry, checked before anything is allocated (the first thing an engine computes).
static int32_t kv_blocks(const InferenceModel& model, const EngineConfig& c) {
  const nn::Gpt2Config& m = model.config();
  DS_CHECK_AS(ConfigError, c.kv_block_size > 0, "[engine] kv_block_size must be positive, got {}", c.kv_block_size);
  check_kv_dtype_on_device(c.kv_dtype, c.device);
  if (c.kv_block_count > 0) return c.kv_block_count;
  DS_CHECK_AS(ConfigError, c.kv_memory_bytes > 0, "[engine] give a KV block count or a positive KV memory budget");
  return KvCache::blocks_for_budget(c.kv_memory_bytes, m.n_layer, model.local_heads(), m.n_embd / m.n_head,
                                    c.kv_block_size, c.kv_dtype);
}

InferenceEngine::InferenceEngine(std::shared_ptr<const InferenceModel> model, const EngineConfig& config)
    : model_(std::move(model)),
      config_(config),
      kv_(kv_blocks(*model_, config), config.kv_block_size, config.max_tracked_sequences,
          model_->config().block_size) {
  DS_CHECK_AS(ConfigError, config.max_ragged_batch_size > 0 && config.max_ragged_sequence_count > 0 &&
              config.max_ragged_sequence_count <= config.max_ragged_batch_size &&
              config.max_ragged_sequence_count <= config.max_tracked_sequences,
              "[engine] need 0 < max_ragged_sequence_count ({}) <= max_ragged_batch_size ({}) and <= "
              "max_tracked_sequences ({})", config.max_ragged_sequence_count, config.max_ragged_batch_size,
              config.max_tracked_sequences);
  const nn::Gpt2Config& m = model_->config();
  check_weights_on_device(model_->weight_format(), config.device);
  DS_CHECK_AS(ConfigError, model_->device().is_cpu() || model_->device() == config.device, "[engine] the model was "
              "placed on {} but the engine runs on {}; load the model for the engine's device",
              model_->device().str(), config.device.str());
  if (config.device.is_cpu()) {
    host_cache_ = std::make_unique<KvCache>(m.n_layer, model_->local_heads(), m.n_embd / m.n_head,
                                            kv_.kv_block_count(), config.kv_block_size, config.kv_dtype);
  } else {
    device_ = make_device_forward(*model_, config.device,
                                  {kv_.kv_block_count(), config.kv_block_size, config.max_ragged_batch_size,
                                   config.max_ragged_sequence_count});
  }
}

int32_t InferenceEngine::vocab_size() const { return model_->config().vocab_size; }

ScheduleStatus InferenceEngine::can_schedule(std::span<const uint64_t> uids, std::span<const int32_t> lengths) const {
  DS_ASSERT(uids.size() == lengths.size(), "uids and lengths differ in size");
  if (static_cast<int64_t>(uids.size()) > config_.max_ragged_sequence_count) return ScheduleStatus::batch_sequence_limit;
  int32_t free = kv_.free_blocks();
  int32_t new_seqs = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < uids.size(); ++i) {
    const KvQuery q = kv_.query(uids[i], lengths[i], free);
    if (q.tokens < lengths[i]) return ScheduleStatus::kv_cache_limit;
    free -= q.blocks;
    if (!kv_.find(uids[i])) ++new_seqs;
    tokens += lengths[i];
  }
  if (kv_.tracked_sequences() + new_seqs > config_.max_tracked_sequences) return ScheduleStatus::engine_sequence_limit;
  if (tokens > config_.max_ragged_batch_size) return ScheduleStatus::batch_token_limit;
  return ScheduleStatus::ok;
}

void InferenceEngine::fork(uint64_t parent, uint64_t child) {
  DS_CHECK_AS(DeviceError, can_fork(), "[engine] forking a sequence (n or best_of above 1 sharing the prompt's KV "
              "blocks) is done by the CPU engine only");
  kv_.fork(parent, child);
}

std::span<const float> InferenceEngine::put(std::span<const uint64_t> uids,
                                            std::span<const std::span<const int32_t>> tokens,
                                            std::span<const uint8_t> all_logits) {
  DS_CHECK(!uids.empty() && uids.size() == tokens.size(), "[engine] put needs one token list per uid ({} uids, {} "
           "lists) and at least one uid", uids.size(), tokens.size());
  std::vector<int32_t> lengths(uids.size());
  std::unordered_set<uint64_t> seen;
  for (size_t i = 0; i < uids.size(); ++i) {
    DS_CHECK(!tokens[i].empty(), "[engine] sequence {} has no new tokens", uids[i]);
    DS_CHECK(seen.insert(uids[i]).second, "[engine] sequence {} appears twice in one batch", uids[i]);
    for (const int32_t t : tokens[i])
      DS_CHECK(t >= 0 && t < vocab_size(), "[engine] token id {} of sequence {} is outside the vocabulary [0, {})", t,
               uids[i], vocab_size());
    lengths[i] = static_cast<int32_t>(tokens[i].size());
  }
  const ScheduleStatus st = can_schedule(uids, lengths);
  DS_CHECK(st == ScheduleStatus::ok, "[engine] cannot run this batch: {} ({} sequences, {} free KV blocks, limits: {} "
           "tokens, {} sequences per batch)", schedule_status_name(st), uids.size(), kv_.free_blocks(),
           config_.max_ragged_batch_size, config_.max_ragged_sequence_count);

  DS_CHECK(all_logits.empty() || all_logits.size() == uids.size(), "[engine] put got {} all_logits flags for {} "
           "sequences", all_logits.size(), uids.size());
  const bool any_all = std::any_of(all_logits.begin(), all_logits.end(), [](uint8_t f) { return f != 0; });
  DS_CHECK_AS(DeviceError, !any_all || !device_, "[serve] log-probabilities of prompt tokens (echo with logprobs) are "
              "computed by the CPU engine only; serve with --device cpu for them");

  batch_.clear();
  rows_.assign(1, 0);
  for (size_t i = 0; i < uids.size(); ++i) {
    const SequenceKv& s = kv_.reserve(uids[i], lengths[i]);
    batch_.add(tokens[i], s.seen_tokens, s.blocks);
    rows_.push_back(rows_.back() + (any_all && all_logits[i] ? lengths[i] : 1));
  }
  if (any_all) batch_.all_logits.assign(all_logits.begin(), all_logits.end());
  for (const auto& [src, dst] : kv_.take_copies()) {
    DS_ASSERT(host_cache_, "a copy-on-write in a device engine");
    host_cache_->copy_block(src, dst);
  }
  const size_t n_logits = static_cast<size_t>(rows_.back()) * static_cast<size_t>(vocab_size());
  const float* logits = nullptr;
  if (device_) {
    logits = device_->forward(batch_);
  } else {
    logits_.resize(n_logits);
    model_->forward(batch_, *host_cache_, scratch_, logits_.data());
    logits = logits_.data();
  }
  for (size_t i = 0; i < uids.size(); ++i) kv_.advance(uids[i], lengths[i]);
  return {logits, n_logits};
}

}  // namespace ds::inference
