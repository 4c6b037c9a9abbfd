// Deterministic data-parallel loader over llm.c token shards, resumable exactly from a saved LoaderState.
// The data is cut into non-overlapping windows of T+1 tokens (stride T, never crossing a shard boundary); an
// epoch visits them in order or in a permutation seeded by seed+epoch (splitmix64, independent of the standard
// library). Global batch g is epoch positions [g*world*B, (g+1)*world*B); rank r takes the r-th run of B.
// See Note [Loader windows] in data_loader.cpp.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ds/data/token_shard.h"

namespace ds::data {

// Where a loader stands; enough to reproduce the following batches exactly (also at another B*world when the
// samples consumed in the epoch divide evenly into the new global batch).
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;  // global batches already produced in this epoch
  int64_t B = 0;               // per-rank batch size when saved
  int64_t T = 0;
  int64_t world = 1;
  int64_t num_windows = 0;  // windows per epoch: identifies the data set
  bool shuffle = false;

  bool operator==(const LoaderState&) const = default;
};

void to_json(nlohmann::json& j, const LoaderState& s);
// Throws ConfigError when a field is missing or has the wrong type.
void from_json(const nlohmann::json& j, LoaderState& s);

class DataLoader {
 public:
  // Throws IoError for a missing or corrupt shard and ConfigError for bad B, T, rank or world, or data too small
  // for one global batch of world*B windows.
  DataLoader(const std::vector<std::string>& shard_paths, int B, int T, int rank, int world, uint64_t seed,
             bool shuffle);
  DataLoader(DataLoader&&) noexcept = default;
  DataLoader& operator=(DataLoader&&) noexcept = default;

  // Fills inputs and targets, B*T int32 each, row-major [B][T]; targets[b][t] = inputs[b][t+1] within a window.
  // Moves to the next epoch (and its permutation) after the last full global batch of an epoch.
  void next_batch(int32_t* inputs, int32_t* targets);

  int64_t epoch() const { return epoch_; }
  int64_t batch_in_epoch() const { return batch_; }
  // Global batches in one pass over the data (the tail that does not fill a global batch is skipped).
  int64_t num_batches() const { return batches_per_epoch_; }
  int64_t num_windows() const { return num_windows_; }
  int64_t num_tokens() const { return num_tokens_; }
  int B() const { return B_; }
  int T() const { return T_; }

  // Back to the first batch of epoch 0; for a validation loader (shuffle off) this starts an ordered pass.
  void reset();

  LoaderState state() const;
  // Resumes from a saved state; ConfigError if T, the data (window count) or shuffle differ, or if the samples
  // consumed do not divide into this loader's global batch.
  void restore(const LoaderState& s);
  std::string state_json() const;
  void restore_json(const std::string& json);

 private:
  void start_epoch();
  int64_t window_at(int64_t position) const;  // epoch position -> global window index
  void copy_window(int64_t window, int32_t* inputs, int32_t* targets) const;

  std::vector<TokenShard> shards_;
  std::vector<int64_t> window_offsets_;  // first global window of each shard, plus the total at the end
  int B_ = 0;
  int T_ = 0;
  int rank_ = 0;
  int world_ = 1;
  uint64_t seed_ = 0;
  bool shuffle_ = false;
  int64_t num_windows_ = 0;
  int64_t num_tokens_ = 0;
  int64_t batches_per_epoch_ = 0;
  int64_t epoch_ = 0;
  int64_t batch_ = 0;
  std::vector<uint32_t> permutation_;  // epoch position -> window, when shuffling
};

}  // namespace ds::data
