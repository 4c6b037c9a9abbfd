// The inference engine (DeepSpeed's InferenceEngineV2): a model, a blocked KV cache and the state of the tracked
// sequences. put() runs one forward over a ragged batch and returns one logit row per sequence (its last new
// token); query/can_schedule say beforehand what would fit, with DeepSpeed's checks in DeepSpeed's order; flush
// forgets a sequence and frees its blocks. Single-threaded: the serving loop owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ds/core/device.h"
#include "ds/inference/device_forward.h"
#include "ds/inference/kv_cache.h"
#include "ds/inference/model_runner.h"
#include "ds/inference/ragged_batch.h"

namespace ds::inference {

struct EngineConfig {
  int32_t kv_block_size = 16;
  int32_t kv_block_count = 0;                // 0: as many as kv_memory_bytes holds
  int64_t kv_memory_bytes = int64_t(256) << 20;
  int32_t max_tracked_sequences = 2048;
  int32_t max_ragged_batch_size = 768;       // tokens per put
  int32_t max_ragged_sequence_count = 512;   // sequences per put
  Device device = Device::cpu();             // where the weights, the KV cache and the forward live
  DType kv_dtype = DType::f32;               // of the KV cache: f32, or bf16 (CPU only)
};

enum class ScheduleStatus {
  ok,
  batch_sequence_limit,   // more sequences than max_ragged_sequence_count
  kv_cache_limit,         // a sequence's tokens do not fit in the free blocks
  engine_sequence_limit,  // tracked + new sequences > max_tracked_sequences
  batch_token_limit,      // more tokens than max_ragged_batch_size
};
const char* schedule_status_name(ScheduleStatus s);

class InferenceEngine {
 public:
  InferenceEngine(std::shared_ptr<const InferenceModel> model, const EngineConfig& config);

  // One forward: tokens[i] are the new tokens of uids[i] (uids distinct, each at least one token). Returns
  // [uids.size(), vocab] logits, row i for the last token of uids[i], valid until the next put. With all_logits
  // (one flag per uid, CPU engine only), a flagged uid gets a row for each of its new tokens instead: sequence i's
  // rows are [rows()[i], rows()[i + 1]), its last new token's row last. Throws ds::Error naming the limit when
  // can_schedule would not return ok.
  std::span<const float> put(std::span<const uint64_t> uids, std::span<const std::span<const int32_t>> tokens,
                             std::span<const uint8_t> all_logits = {});
  // The first row of each sequence of the last put, and the number of rows at the end.
  std::span<const int32_t> rows() const { return rows_; }
  KvQuery query(uint64_t uid, int32_t max_tokens, int32_t max_blocks) const { return kv_.query(uid, max_tokens, max_blocks); }
  ScheduleStatus can_schedule(std::span<const uint64_t> uids, std::span<const int32_t> lengths) const;
  // Frees uid's blocks; false for an untracked uid.
  bool flush(uint64_t uid) { return kv_.flush(uid); }
  // Whether fork works here: the CPU engine copies shared blocks on write; a device engine does not (yet).
  bool can_fork() const { return !device_; }
  // child continues from parent's tokens, sharing its KV blocks (KvStateManager::fork); CPU engine only.
  void fork(uint64_t parent, uint64_t child);
  int32_t free_blocks() const { return kv_.free_blocks(); }
  int32_t remaining_block_capacity(uint64_t uid) const { return kv_.remaining_block_capacity(uid); }

  const KvStateManager& kv_state() const { return kv_; }
  // Bytes of KV storage, on the engine's device.
  int64_t kv_cache_bytes() const { return device_ ? device_->kv_bytes() : host_cache_->bytes(); }
  // Where the forward runs, for banners: "cpu" or the GPU with its memory.
  std::string device_description() const { return device_ ? device_->describe() : "cpu"; }
  const EngineConfig& config() const { return config_; }
  const InferenceModel& model() const { return *model_; }
  int32_t vocab_size() const;
  int32_t max_context() const { return kv_.max_context(); }

 private:
  std::shared_ptr<const InferenceModel> model_;
  EngineConfig config_;
  std::unique_ptr<KvCache> host_cache_;    // the CPU forward's KV storage
  std::unique_ptr<DeviceForward> device_;  // or the device forward, which holds its own
  KvStateManager kv_;
  RaggedBatch batch_;
  InferenceModel::Scratch scratch_;
  std::vector<float> logits_;
  std::vector<int32_t> rows_;
};

}  // namespace ds::inference
