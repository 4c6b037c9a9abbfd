// ZeroOptimizer: the ZeRO facade the Engine drives (DESIGN decision 6), and the ModuleHooks the module runner
// calls around each gather unit. It owns no mechanism of its own: the stage chooses which parts exist and how they
// are configured, and the hooks delegate to them.
//   PartitionLayout       which elements of each unit this rank owns (partition_layout.h)
//   ParamStorage          where the parameters are kept: all of them, or the owned partition (param_storage.h)
//   ParameterCoordinator  fetching units in fp32 for compute: stage-3 gathers, trace prefetch, pool; mixed
//                         precision's widening (parameter_coordinator.h); absent when fp32 parameters are resident
//   GradientReducer       gradient landing, buckets and reductions: full (stages 0-1) or partitioned (stages 2-3)
//                         (gradient_reducer.h)
//   OptimizerStateStore   master weights and Adam moments, tile by tile (optimizer_state.h)
//   OptimizerStep         Adam or LAMB over the store, and the mixed-precision master (optimizer_step.h)
// Stages, with N data-parallel ranks and fp32 Adam (mixed precision: 2 + 2 + 12 bytes, Note [Mixed precision]):
//   stage 0: gradients all-reduced (2Ψ), optimizer over everything (16Ψ per rank).
//   stage 1: full gradients, reduce-scattered at the accumulation boundary (Ψ), optimizer state and step on the
//            owned chunks, updated chunks all-gathered (Ψ): 4Ψ + 4Ψ + 8Ψ/N.
//   stage 2: no full gradient buffer: gradients are reduce-scattered out of buckets during backward, every
//            micro-batch, into the owned partition (Ψ per micro-batch): 4Ψ + 12Ψ/N.
//   stage 3: parameters partitioned too: a unit is all-gathered before its forward and again before its backward
//            and released after each; gradients as stage 2. Traffic 3Ψ, memory 16Ψ/N. The full parameters never
//            exist on a rank: initial values arrive through set_parameters().
// A parameter sliced into units (the token embedding) is reached row by row through lookup_rows and
// accumulate_row_grads where it is not resident (Note [Sliced head] in gpt2.cpp).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/nn/module.h"
#include "ds/config/config.h"
#include "ds/zero/compressed_adam.h"
#include "ds/zero/gradient_reducer.h"
#include "ds/zero/optimizer_state.h"
#include "ds/zero/optimizer_step.h"
#include "ds/zero/param_storage.h"
#include "ds/zero/parameter_coordinator.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/precision.h"
#include "ds/zero/row_exchange.h"

namespace ds::zero {

class ZeroOptimizer : public nn::ModuleHooks {
 public:
  // The store must be materialized with unit alignment ZeroOptimizer::alignment(N), without gradients from stage 2
  // on and without parameters at stage 3, in the precision's dtypes. `make_state` makes the optimizer-state store
  // (default: a ResidentStateStore), in tiles of zero.sub_group_size elements.
  // `param_swap` puts the stage-3 parameter partition on NVMe (offload_param device 'nvme').
  ZeroOptimizer(nn::ParameterStore& store, comm::Communicator& comm, const config::ZeroConfig& zero,
                const cpu::AdamParams& hyper, const ZeroPrecision& precision = {},
                const zero::StateStoreFactory& make_state = {},
                const std::optional<zero::ParamSwapOptions>& param_swap = std::nullopt);
  ~ZeroOptimizer() override;
  static int64_t alignment(int world) { return zero::PartitionLayout::alignment(world); }
  static bool keeps_full_gradients(int stage) { return stage < 2; }
  static bool keeps_full_parameters(int stage) { return stage < 3; }

  // Sets elements [flat_offset, flat_offset + n) of the parameters (stage 3: the part this rank owns; mixed
  // precision: the master weights too), or of the Adam moments (the part this rank owns). Every rank gets the same
  // values, so no communication is needed. Not while a unit is gathered. Checkpoints load through these.
  enum class State : uint8_t { param, exp_avg, exp_avg_sq };
  void set_state(State which, int64_t flat_offset, const float* values, int64_t n);
  void set_parameters(int64_t flat_offset, const float* values, int64_t n) {
    set_state(State::param, flat_offset, values, n);
  }
  // Partition elements [begin, begin + n) of this rank's fp32 parameters (the master weights in mixed precision,
  // read through the state store); copy_owned_params reads the whole partition (partition_numel() elements).
  void read_owned_params(int64_t begin, int64_t n, float* out);
  void copy_owned_params(float* out) { read_owned_params(0, partition_numel(), out); }
  void set_step_count(int64_t step);
  // Steps with LAMB instead of Adam (DeepSpeed's FusedLamb: one trust ratio per parameter tensor). Needs the
  // replicated layout of stage 0, where every rank holds every parameter whole; ConfigError otherwise.
  void use_lamb(const cpu::LambParams& hyper);
  // Steps with 1-bit Adam or 0/1 Adam (zero/compressed_adam.h): their compressed steps exchange 1-bit messages
  // instead of all-reducing gradients. Stage 0 only (as in DeepSpeed); ConfigError otherwise.
  void use_compression(const config::OptimizerConfig& options);
  const zero::CompressedAdam* compression() const { return compressed_.get(); }
  // The betas of the next steps (a schedule that cycles momentum sets them before each step).
  void set_betas(float beta1, float beta2) { step_.set_betas(beta1, beta2); }

  int stage() const { return stage_; }
  int world() const { return layout_.world(); }
  int rank() const { return layout_.rank(); }
  // Before the first micro-batch of a batch: clears the gradients.
  void begin_batch();
  // Stage 3 statistics: all-gathers issued ahead of use, and those found already complete or in flight when used.
  int64_t prefetches_issued() const { return coordinator_ ? coordinator_->prefetches_issued() : 0; }
  int64_t prefetch_hits() const { return coordinator_ ? coordinator_->prefetch_hits() : 0; }
  // Around each micro-batch's forward and backward; `last` marks the accumulation boundary, where stages 0-1
  // reduce (Note [Gradient buckets]).
  void begin_micro_batch(bool last) { reducer_->begin_micro_batch(last); }
  void end_micro_batch(bool last) { reducer_->end_micro_batch(last); }
  // Global L2 norm of the averaged gradient (valid after the boundary); inf or NaN when a gradient overflowed.
  double grad_norm() { return reducer_->grad_norm(); }
  // Sums the reduced gradient of the row-sliced parameter `p` over `group`: the ranks of the pipeline stages that
  // hold it too (DeepSpeed's tied layers: the embedding and the head), each with the same units and partition.
  // After the boundary, before the norm.
  void sum_tied_gradient(const nn::Parameter& p, comm::Communicator& group);
  // The norm sums over the model-parallel group too (GradientReducer::set_norm_group).
  void set_norm_group(comm::Communicator* group, std::vector<std::pair<int64_t, int64_t>> skip) {
    reducer_->set_norm_group(group, std::move(skip));
  }
  // Adam step on this rank's share with gradients multiplied by grad_scale (on top of the 1/N averaging), then
  // the updated parameters are all-gathered.
  void step(float lr, float grad_scale);
  // Ends a step whose update is skipped (a loss-scale overflow): the gradients are dropped.
  void skip_step();
  const ZeroPrecision& precision() const { return precision_; }
  int64_t step_count() const { return step_.step_count(); }

  // The module runner's hooks: fetch and release parameters (coordinator), bind and reduce gradients (reducer).
  void pre_forward(const nn::Module& m) override;
  void post_forward(const nn::Module& m) override;
  void pre_backward(const nn::Module& m) override;
  void post_backward(const nn::Module& m) override;
  const float* slice_data(const nn::Module& slice) override;
  float* slice_grads(const nn::Module& slice) override;
  void lookup_rows(const nn::Parameter& p, const int32_t* ids, int64_t n, float* out) override;
  void accumulate_row_grads(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) override;

  // All parameters, unpadded, in declaration order (a collective from stage 3, or from stage 1 in mixed
  // precision, where they are the fp32 master weights: every rank must call it).
  std::vector<float> full_parameters();
  // Elements of the owned partition (sum of chunk sizes).
  int64_t partition_numel() const { return layout_.partition_numel(); }
  const zero::PartitionLayout& layout() const { return layout_; }
  // The master weights and Adam moments of the owned partition (checkpoints read and write them here).
  zero::OptimizerStateStore& state_store() { return *state_; }
  // The parameter partition's NVMe transfers (zeros unless offload_param is 'nvme').
  zero::OptimizerStateStore::SwapStats param_swap_stats() const { return params_.swap_stats(); }
  // Waits until everything swapped out so far is written (a failed write shows here at the latest).
  void sync_offload() {
    params_.sync();
    state_->sync();
  }
  const zero::GradientReducer& reducer() const { return *reducer_; }

 private:
  static int checked_stage(int stage);

  nn::ParameterStore& store_;
  comm::Communicator& comm_;
  int stage_;
  ZeroPrecision precision_;
  zero::PartitionLayout layout_;
  zero::ParamStorage params_;
  std::unique_ptr<zero::OptimizerStateStore> state_;
  zero::OptimizerStep step_;
  zero::RowExchange rows_;
  std::unique_ptr<comm::Communicator> hpz_;  // ZeRO++ hpZ's group of zero_hpz_partition_size ranks (stage 3)
  std::unique_ptr<zero::ParameterCoordinator> coordinator_;  // null: fp32 parameters resident in the store
  std::unique_ptr<zero::GradientReducer> reducer_;
  std::unique_ptr<zero::CompressedAdam> compressed_;  // null unless 1-bit Adam or 0/1 Adam
};

}  // namespace ds::zero
