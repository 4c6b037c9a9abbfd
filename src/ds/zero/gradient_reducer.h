// The gradient reducer: where each gather unit's gradient lands during its backward, and how gradients are summed
// over the data-parallel ranks into the gradient this rank steps with (DESIGN decision 6). Two kinds; the stage
// picks one:
//   full (stages 0-1): every rank accumulates the whole gradient in the store's flat buffer over the micro-batches;
//     at the accumulation boundary it is all-reduced (stage 0, replicated layout) or reduce-scattered in place into
//     the owned chunks (stage 1); with overlap_comm, during the last backward as units finish.
//   partitioned (stages 2-3): there is no full gradient buffer: after each unit's backward its gradient is
//     reduce-scattered out of a bucket, every micro-batch, and accumulated into the owned gradient partition.
// Gradients are summed, not averaged: the step and the norm divide by N. 16-bit gradients (mixed precision) land
// in fp32 and are rounded once into their dtype (fold.h), per unit and micro-batch.
//
// Note [Gradient buckets]
// A bucket holds reduce_bucket_size gradient elements in the gradient dtype (rounded down to a multiple of N, at
// least N), as `comm_buffer` memory, capped at what the model needs: no bucket is larger than the model's padded
// size, and there are two buckets only with overlap_comm and a model that does not fit in one.
// Layout: a bucket is a sequence of segments, filled from its start in the order units finish their backward.
// A segment is N blocks of s elements, block r holding what rank r will own, so one reduce-scatter of count s
// reduces it. A whole unit is a segment (s = its chunk) in its own flat layout: an fp32 gradient is written
// there directly by the model, no copy. A unit larger than a bucket lands in a separate fp32 buffer and is
// reduced in pieces of at most a bucket: piece k is elements [k·s, k·s + s) of every rank's chunk, s = bucket/N,
// packed into one segment. 16-bit gradients also land in fp32 and are rounded into their segment.
//     bucket: | unit a: r0 .. rN-1 | unit b: r0 .. rN-1 | piece c[0:s): r0 .. rN-1 | ... free ... |
// A segment is reduce-scattered in place: this rank's block of it receives this rank's share, which is added into
// the owned partition when the reduce-scatter completes (no receive buffer). Segments are not merged into one
// collective per bucket: that would need the blocks of all segments interleaved by rank, a copy of every
// gradient, which costs the CPU more than the calls it saves; the traffic is the same either way, Ψ(N-1)/N.
// When: consecutive units share a bucket until the next does not fit; the other bucket is then used once its
// reductions are done. With overlap_comm a segment's reduce-scatter is issued as soon as the segment is complete,
// on the communicator's worker thread while backward goes on, with at most two outstanding (the oldest is waited
// for and accumulated first, as DeepSpeed's stage 3 keeps two reduce events). Without it a bucket is reduced when
// it is full or the micro-batch ends, as DeepSpeed does, and waited for at once.
// Full gradients (stages 0-1) are reduced from the flat buffer in place, in the same bucket sizes: stage 0
// all-reduces consecutive units together, up to a bucket, as one collective; stage 1 reduce-scatters each unit in
// place (nothing to pack) and packs the pieces of a unit larger than a bucket as above.
// At DeepSpeed's default of 5e8 elements a model of fewer parameters is one bucket: it is reduced at the end of
// backward without overlap_comm, and as it goes with it; a smaller reduce_bucket_size (a few transformer blocks)
// bounds this memory at the price of waiting for earlier reductions when a bucket is reused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"
#include "ds/nn/parameter.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/row_exchange.h"

namespace ds::zero {

class GradientReducer {
 public:
  struct Options {
    DType grads = DType::f32;           // stored and communicated in this dtype
    bool lands = true;                  // gradients land in reducer memory in backward (bind/commit); full
                                        // reducers without it leave them in the store's fp32 flat buffer
    bool overlap = false;               // overlap_comm
    int64_t bucket_numel = 500000000;   // reduce_bucket_size
    Tier partition_tier = Tier::device;  // the owned gradient partition's (host with offload_optimizer)
    bool quantized = false;             // ZeRO++ qgZ: partitioned reductions as int4 all-to-alls (quantized_comm.h)
  };
  virtual ~GradientReducer() = default;
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  bool lands() const { return options_.lands; }
  DType dtype() const { return options_.grads; }
  // Elements per bucket and the number of buckets (Note [Gradient buckets]); 0 buckets for a full reducer that
  // packs nothing.
  int64_t bucket_numel() const { return bucket_numel_; }
  virtual int bucket_count() const = 0;

  // Before the first micro-batch of a batch: waits for reductions and clears the gradients.
  virtual void begin_batch() = 0;
  // Around each micro-batch; `last` marks the accumulation boundary.
  void begin_micro_batch(bool last) { last_micro_ = last; }
  virtual void end_micro_batch(bool last) = 0;
  // Around unit i's backward. bind (lands() only) points the unit's Parameter::grad views at zeroed fp32 memory;
  // commit takes the finished gradient over (and unbinds them).
  virtual void bind(size_t unit) = 0;
  virtual void commit(size_t unit) = 0;
  // Where unit i's fp32 gradient goes now (between bind and commit, or the flat buffer when not landing).
  virtual float* unit_grads(size_t unit) = 0;
  // Gradient rows ids[i] += rows[i] of the row-sliced parameter p, in the reducer's accounting (a collective for
  // partitioned gradients).
  virtual void accumulate_rows(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) = 0;
  // Waits for every reduction in flight.
  virtual void drain() = 0;
  // This rank's reduced gradient chunk of unit i, a [chunk] view in the gradient dtype (valid after the boundary).
  virtual Tensor owned_chunk(size_t unit) = 0;
  // Global L2 norm of the averaged gradient (valid after the boundary); inf or NaN when a gradient overflowed. A
  // collective unless the layout is replicated (and the norm group is of one).
  double grad_norm();
  // Local gradients (the compressed optimizers' compressed steps, zero/compressed_adam.h): the boundary reduces
  // nothing and each rank keeps the sum of its own micro-batches; grad_norm() is then the root mean square of the
  // ranks' own norms (one all-reduce of a float), so every rank clips and detects overflow alike. Replicated layout
  // only; set before the batch's first micro-batch.
  void set_local(bool local);
  // Model parallelism: this rank's gradients are one part of the model's, so the norm also sums over `group` (the
  // ranks holding the other parts), with the flat ranges `skip` [begin, end) left out on this rank (parameters
  // another rank of the group holds too and counts: the replicated ones of tensor parallelism).
  void set_norm_group(comm::Communicator* group, std::vector<std::pair<int64_t, int64_t>> skip);

 protected:
  GradientReducer(const PartitionLayout& layout, comm::Communicator& comm, RowExchange& rows, const Options& options);
  // Sum of squares of what this rank owns, unit chunk by unit chunk, less the skipped ranges.
  virtual double local_sum_squares();
  bool skips() const { return !norm_skip_.empty(); }
  // Waits for a reduction still in flight at destruction (its buffers are ours); its error no longer matters.
  static void wait_quietly(const comm::WorkPtr& work);

  // An fp32 landing buffer of at least n elements, from a pool allocated on first use and reused.
  Tensor take_landing(int64_t n);
  void return_landing(const Tensor& buf);
  void bind_grads(size_t unit, const Tensor& buf);
  void unbind_grads(size_t unit);
  // dst += src in the gradient dtype; dst (gradient dtype) += src (fp32). Split over OpenMP for large n.
  void accumulate(void* dst, const void* src, int64_t n) const;
  void accumulate_f32(void* dst, const float* src, int64_t n) const;
  std::byte* offset_bytes(void* base, int64_t elements) const {
    return static_cast<std::byte*>(base) + elements * static_cast<int64_t>(dtype_size(options_.grads));
  }

  const PartitionLayout& layout_;
  comm::Communicator& comm_;
  RowExchange& rows_;
  const Options options_;
  const int64_t bucket_numel_;  // capacity of one bucket, or of one packed piece (N x s)
  bool last_micro_ = true;
  bool local_ = false;

 private:
  comm::Communicator* norm_group_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> norm_skip_;  // sorted flat ranges
  int64_t landing_numel_ = 0;
  std::vector<Tensor> landing_pool_;
  std::vector<bool> landing_busy_;
};

// Stages 0-1: gradients accumulate in the store's flat buffer (materialized with gradients in options.grads).
std::unique_ptr<GradientReducer> make_full_gradient_reducer(const PartitionLayout& layout, nn::ParameterStore& store,
                                                            comm::Communicator& comm, RowExchange& rows,
                                                            const GradientReducer::Options& options);
// Stages 2-3: gradients land in buckets and accumulate in an owned partition (`grad` memory).
std::unique_ptr<GradientReducer> make_partitioned_gradient_reducer(const PartitionLayout& layout,
                                                                   comm::Communicator& comm, RowExchange& rows,
                                                                   const GradientReducer::Options& options);

}  // namespace ds::zero
