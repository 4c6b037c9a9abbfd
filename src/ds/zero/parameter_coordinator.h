// The parameter coordinator: makes a unit's parameters available in fp32 for the model to compute with, between the
// module runner's pre_ and post_ hooks, where they are not resident in fp32. With partitioned parameters (ZeRO
// stage 3) a unit is all-gathered from the ranks' chunks before its forward and again before its backward and
// released after each, prefetched ahead along the recorded module trace, kept when reused soon or small
// (persistence), in buffers from one pool (Note [Stage-3 trace] in the .cpp). With 16-bit parameters held whole
// (mixed precision, stages 0-2) a unit is widened from the 16-bit copy instead, with no communication.
// It also serves row lookups of a row-sliced parameter that is not resident (Note [Sliced head] in gpt2.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"
#include "ds/nn/parameter.h"
#include "ds/config/config.h"
#include "ds/zero/param_storage.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/row_exchange.h"

namespace ds::zero {

class ParameterCoordinator {
 public:
  struct Options {
    bool gathers = false;          // parameters are partitioned: fetching all-gathers them
    int64_t prefetch_bucket = 0;   // elements in flight ahead of use (stage3_prefetch_bucket_size)
    int64_t max_live = 0;          // elements gathered or in flight (stage3_max_live_parameters)
    int64_t max_reuse = 0;         // keep a unit the trace reuses within this many elements (..._max_reuse_distance)
    int64_t persistence = -1;      // units of at most this many elements stay gathered (..._persistence_threshold)
    bool quantized = false;        // ZeRO++ qwZ: the all-gather over the data-parallel group moves int8 blocks
    // ZeRO++ hpZ: the group of zero_hpz_partition_size ranks this rank belongs to (null: none). A unit's first
    // gather in a step, over all ranks, leaves this rank its 1/h share as a secondary copy; the step's later
    // gathers of that unit (backward) all-gather the copies within the group.
    comm::Communicator* hpz = nullptr;
  };
  // The stage-3 knobs of `zero` when `gathers`; without gathering there is no trace, prefetch or persistence.
  // `hpz`: the ZeRO++ secondary group, when zero_hpz_partition_size > 1.
  static Options options_for(const config::ZeroConfig& zero, bool gathers, comm::Communicator* hpz = nullptr);

  ParameterCoordinator(const PartitionLayout& layout, ParamStorage& storage, comm::Communicator& comm,
                       RowExchange& rows, const Options& options);
  ~ParameterCoordinator();
  ParameterCoordinator(const ParameterCoordinator&) = delete;
  ParameterCoordinator& operator=(const ParameterCoordinator&) = delete;

  // Around a training step (begin_batch .. step/skip_step): fetches inside it follow and record the trace.
  void begin_step();
  // The step updated the parameters: every gathered copy is stale and released; fetches leave the trace.
  void end_step();
  // Makes unit i's parameters available in fp32 and binds its Parameter::data views.
  void fetch(size_t unit);
  // Unbinds and releases unit i, unless it persists or (in a step) the trace reuses it soon; even_persistent
  // releases it regardless.
  void release(size_t unit, bool even_persistent);
  // Waits for prefetches and releases everything (before the parameters change).
  void release_all();
  // Unit i's gathered fp32 parameters (between fetch and release).
  const float* data(size_t unit) const;
  // The first `n` fp32 parameters of unit i, fetched for the copy if it is not available (a collective when
  // gathering).
  void copy_unit(size_t unit, float* out, int64_t n);
  // out[i] = row ids[i] of the row-sliced parameter p (a collective when gathering).
  void lookup_rows(const nn::Parameter& p, const int32_t* ids, int64_t n, float* out);

  int64_t prefetches_issued() const { return prefetches_issued_; }
  int64_t prefetch_hits() const { return prefetch_hits_; }

 private:
  void gather(size_t unit);
  void prefetch();
  // Starts unit i's all-gather into `full` (storage dtype): within the hpZ group from the secondary copies when
  // they are valid, else over all ranks (quantized with qwZ).
  comm::WorkPtr start_gather(size_t unit, const Tensor& own, const Tensor& full);
  // Keeps this rank's hpZ share of a unit gathered over all ranks.
  void keep_secondary(size_t unit, const Tensor& full);
  Tensor take_buffer(size_t unit, DType dtype);
  void return_buffer(Tensor buf) { free_buffers_.push_back(std::move(buf)); }

  const PartitionLayout& layout_;
  ParamStorage& storage_;
  comm::Communicator& comm_;
  RowExchange& rows_;
  const Options options_;
  std::vector<Tensor> gathered_;      // per unit: its fp32 parameters while available
  std::vector<bool> persistent_;
  std::vector<Tensor> free_buffers_;  // released buffers (fp32, and 16-bit staging), reused
  std::vector<Tensor> inflight_buf_;  // per unit: the buffer an in-flight prefetch fills (storage dtype)
  std::vector<comm::WorkPtr> inflight_;     // per unit: that prefetch
  std::vector<Tensor> inflight_src_;        // per unit: the owned chunk it sends (pinned while swapped)
  std::vector<Tensor> secondary_;     // hpZ: per unit, this rank's 1/h share (storage dtype)
  std::vector<bool> secondary_valid_;  // ... holding the current parameters
  std::vector<size_t> trace_;         // unit fetch order of one training step
  bool in_step_ = false, recording_ = true, trace_complete_ = false;
  size_t trace_pos_ = 0;
  int64_t live_numel_ = 0;            // gathered + in flight
  int64_t prefetches_issued_ = 0, prefetch_hits_ = 0;
};

}  // namespace ds::zero
