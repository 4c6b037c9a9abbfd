// ZeRO stages 0-2 over gather units (DESIGN decision 6). Every unit of the flat buffers is padded to a multiple of
// the data-parallel size N and split into N equal chunks; rank r owns chunk r of every unit. So a unit's
// gradients reduce-scatter with one equal-count collective and its updated parameters all-gather with another,
// and the optimizer state of a rank is the concatenation of its chunks (Ψ/N elements, padding included).
//   stage 0: gradients all-reduced (2Ψ), optimizer over everything (16Ψ per rank in fp32).
//   stage 1: full gradients, reduce-scattered per unit at the accumulation boundary (Ψ), optimizer state and
//            step on the owned chunks, updated chunks all-gathered (Ψ): 4Ψ + 4Ψ + 8Ψ/N.
//   stage 2: no full gradient buffer: each unit's gradients land in a bucket during its backward and are
//            reduce-scattered into the owned partition right after it (Ψ per micro-batch): 4Ψ + 12Ψ/N.
//   stage 3: parameters partitioned too: a unit is all-gathered into a pooled buffer before its forward and again
//            before its backward and released after each (units of at most stage3_param_persistence_threshold
//            elements stay gathered until the next step); gradients as stage 2. Traffic 3Ψ, memory 16Ψ/N.
//            The full parameters never exist on a rank: initial values arrive through set_parameters().
//            See Note [Stage-3 trace] in the .cpp for prefetching, the reuse distance and the buffer pool.
// A parameter sliced into units (the token embedding) is reached row by row through lookup_rows and
// accumulate_row_grads where it is not resident (Note [Sliced head] in gpt2.cpp).
// Mixed precision (Note [Mixed precision] in the .cpp): parameters are stored in 16 bits (2 bytes, partitioned
// from stage 3), gradients in the accumulation dtype (2 bytes by default, partitioned from stage 2), and the
// optimizer keeps fp32 master weights with the moments (12 bytes, partitioned from stage 1): 2 + 2 + 12.
// Buckets and receive buffers are `comm_buffer` memory, reported apart from the model states. A bucket is one gather
// unit (about a transformer block): DeepSpeed's reduce_bucket_size would make stage-2 buckets of its default 5e8
// elements (2 GB); units give the same overlap with bounded memory, and a reduce_bucket_size below the largest
// unit is reported at start-up rather than silently honoured in part.
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/nn/module.h"
#include "ds/runtime/config.h"

namespace ds {

// Storage dtypes: f32 for both in fp32 training; with fp16/bf16, params is the 16-bit type and grads the
// gradient accumulation type (16-bit or f32). Gradients are communicated in the grads dtype.
struct ZeroPrecision {
  DType params = DType::f32;
  DType grads = DType::f32;
  bool mixed() const { return params != DType::f32; }
};

class ZeroOptimizer : public ModuleHooks {
 public:
  // The store must be materialized with unit alignment ZeroOptimizer::alignment(N), without gradients from stage 2
  // on and without parameters at stage 3, in the precision's dtypes.
  ZeroOptimizer(ParameterStore& store, Communicator& comm, const ZeroConfig& zero, const cpu::AdamParams& hyper,
                const ZeroPrecision& precision = {});
  ~ZeroOptimizer() override;
  static int64_t alignment(int world) { return int64_t(16) * world; }  // chunks stay 64-byte aligned
  static bool keeps_full_gradients(int stage) { return stage < 2; }
  static bool keeps_full_parameters(int stage) { return stage < 3; }

  // Sets elements [flat_offset, flat_offset + n) of the parameters (stage 3: the part this rank owns), or of the
  // Adam moments (the part this rank owns). Every rank gets the same values, so no communication is needed. Not
  // while a unit is gathered. Checkpoints load through these, at any world size and stage.
  enum class State : uint8_t { param, exp_avg, exp_avg_sq };
  void set_state(State which, int64_t flat_offset, const float* values, int64_t n);
  void set_parameters(int64_t flat_offset, const float* values, int64_t n) {
    set_state(State::param, flat_offset, values, n);
  }
  // This rank's partition of the parameters (partition_numel() elements, unit chunks in order, as the moments).
  void copy_owned_params(float* out) const;
  void set_step_count(int64_t step) { step_ = step; }

  int stage() const { return stage_; }
  int world() const { return world_; }
  int rank() const { return rank_; }
  // Before the first micro-batch of a batch: clears the gradients.
  void begin_batch();
  // Stage 3 statistics: all-gathers issued ahead of use, and those found already complete or in flight when used.
  int64_t prefetches_issued() const { return prefetches_issued_; }
  int64_t prefetch_hits() const { return prefetch_hits_; }
  // Around each micro-batch's forward and backward; `last` marks the accumulation boundary, where stages 0-1
  // reduce: with overlap_comm during the last backward, unit by unit as each unit's gradients complete (the
  // collectives run on the communicator's worker thread while backward goes on), otherwise after it.
  void begin_micro_batch(bool last) { last_micro_ = last; }
  void end_micro_batch(bool last);
  // Global L2 norm of the averaged gradient (valid after the boundary); inf or NaN when a gradient overflowed.
  double grad_norm();
  // Adam step on this rank's share with gradients multiplied by grad_scale (on top of the 1/N averaging), then
  // the updated parameters are all-gathered.
  void step(float lr, float grad_scale);
  // Ends a step whose update is skipped (a loss-scale overflow): the gradients are dropped.
  void skip_step();
  const ZeroPrecision& precision() const { return precision_; }
  int64_t step_count() const { return step_; }

  // Stage 3: gather a unit's parameters before its forward, release them after.
  void pre_forward(const Module& m) override;
  void post_forward(const Module& m) override;
  // Stages 2-3: bind a unit's gradients to a bucket before its backward (stage 3: gather it), reduce-scatter the
  // bucket after (stage 3: release the parameters).
  void pre_backward(const Module& m) override;
  void post_backward(const Module& m) override;
  const float* slice_data(const Module& slice) override;
  float* slice_grads(const Module& slice) override;
  void lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) override;
  void accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) override;

  // All parameters, unpadded, in declaration order (a collective from stage 3, or from stage 1 in mixed
  // precision, where they are the fp32 master weights: every rank must call it).
  std::vector<float> full_parameters();
  // Elements of the owned partition (sum of chunk sizes).
  int64_t partition_numel() const { return partition_numel_; }
  Tensor& exp_avg() { return m_; }
  Tensor& exp_avg_sq() { return v_; }
  const Tensor& exp_avg() const { return m_; }
  const Tensor& exp_avg_sq() const { return v_; }

 private:
  struct UnitState {
    const ParamUnit* unit;
    int64_t chunk;        // padded_numel / N
    int64_t part_offset;  // where this unit's chunk starts in the partition buffers
  };
  enum class Finish : uint8_t { accumulate, none, copy_owned };  // what completing a reduction needs
  struct Pending {
    size_t unit;
    WorkPtr work;
    int bucket;  // stage 2-3: bucket (receive slot = bucket & 1); stage 1: receive slot
    Finish finish;
  };
  const UnitState& state_of(const Module& m) const;
  size_t index_of(const Module& m) const { return static_cast<size_t>(&state_of(m) - units_.data()); }
  // Calls f(flat_offset, partition_offset, count) for each piece of [begin, end) this rank owns.
  template <typename F>
  void for_owned(int64_t begin, int64_t end, F&& f) const;
  // All ranks' ids for a row collective (checks that every rank passed the same n).
  const int32_t* gather_ids(const int32_t* ids, int64_t n);
  std::byte* owned_params(const UnitState& u) const;  // params dtype
  std::byte* owned_grads(const UnitState& u);         // grads dtype
  std::byte* flat_grads_at(int64_t offset);
  void reduce_deferred();
  void reduce_unit_full_grads(const UnitState& u);
  void drain(size_t keep_in_flight);
  int free_bucket();
  void fetch(size_t unit);    // gather with trace bookkeeping and prefetch
  void gather(size_t unit);
  void release(size_t unit, bool even_persistent);
  void prefetch();
  Tensor take_buffer(size_t unit, DType dtype);
  void return_buffer(Tensor buf);
  void issue_full_grad_reduction(size_t unit);

  ParameterStore& store_;
  Communicator& comm_;
  int stage_;
  bool overlap_;
  ZeroPrecision precision_;
  bool resident_;    // fp32 parameters live in the store, bound to the model (fp32 at stages 0-2)
  bool buckets_on_;  // gradients go through fp32 buckets in backward (stages 2-3, and mixed precision)
  Tensor master_;    // mixed precision: the fp32 master partition (optimizer memory)
  Tensor step_grads_;  // mixed precision: one unit chunk of gradients widened to fp32 for Adam
  Tensor bucket_out_;  // grads dtype != f32, stages 2-3: the bucket narrowed for its reduce-scatter (two slots)
  std::vector<size_t> deferred_;  // stages 0-1 with overlap: sliced units reduced after backward
  int rank_, world_;
  cpu::AdamParams hyper_;
  int64_t step_ = 0;
  std::vector<UnitState> units_;
  int64_t partition_numel_ = 0;
  Tensor m_, v_;
  Tensor part_grads_;                 // stage 2: the owned gradient partition
  Tensor recv_;                       // receive buffers for reduce-scatter (one per bucket)
  Tensor gather_send_;                // stage 1-2: the owned chunk, staged for all-gather
  Tensor buckets_;                    // stage 2-3: two gradient buckets (used alternately, for overlap)
  int64_t bucket_numel_ = 0;
  Tensor row_ids_, row_data_;         // lookup_rows / accumulate_row_grads staging (grown on demand)
  int64_t max_chunk_ = 0;
  bool bucket_busy_[2] = {false, false};
  std::vector<int> unit_bucket_;      // stage 2-3: the bucket bound to each unit in backward (0 or 1)
  // stage 3
  Tensor own_params_;                 // the owned parameter partition (model-state `param` memory)
  std::vector<Tensor> gathered_;      // per unit: its gathered parameters while available
  std::vector<bool> persistent_;
  std::vector<Tensor> free_buffers_;  // released gather buffers (fp32, and 16-bit staging), reused
  int64_t large_numel_ = 0;           // gather buffer size for every unit of at least a quarter of it
  std::vector<Tensor> inflight_buf_;  // per unit: the buffer an in-flight prefetch fills (params dtype)
  std::vector<WorkPtr> inflight_;     // per unit: that prefetch
  std::vector<size_t> trace_;         // unit fetch order of one training step
  bool in_step_ = false, recording_ = true, trace_complete_ = false;
  size_t trace_pos_ = 0;
  int64_t live_numel_ = 0;            // gathered + in flight
  int64_t prefetch_limit_ = 0, max_live_ = 0, max_reuse_ = 0;
  int64_t prefetches_issued_ = 0, prefetch_hits_ = 0;
  std::deque<Pending> pending_;
  bool last_micro_ = true;
  int next_slot_ = 0;
};

}  // namespace ds
