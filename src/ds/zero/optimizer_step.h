// The optimizer step of this rank's partition: Adam/AdamW (ops::adamw_step, DeepSpeed's CPU-Adam semantics) over
// the owned chunks, one state tile at a time through the OptimizerStateStore, or LAMB (DeepSpeed's FusedLamb, one
// trust ratio per parameter tensor: two passes, Note [LAMB over tiles]), and the mixed-precision master weights
// (Note [Mixed precision] in the .cpp): with 16-bit parameters the store holds an fp32 master copy of the owned
// partition, the optimizer updates it, and the step rounds it into the 16-bit parameters. The step never sees where
// parameters and gradients live: the caller hands it each unit's owned chunks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "ds/core/tensor.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/zero/optimizer_state.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/precision.h"

namespace ds::zero {

class OptimizerStep {
 public:
  // Unit i's owned chunk, a [chunk] view (params: in precision.params; grads: in precision.grads).
  using OwnedFn = std::function<Tensor(size_t unit)>;

  OptimizerStep(const PartitionLayout& layout, OptimizerStateStore& state, const cpu::AdamParams& hyper,
                const ZeroPrecision& precision);

  // One Adam step with learning rate lr on gradients multiplied by grad_scale / N (the 1/N turns the summed
  // gradient into the mean): updates the owned parameters (through the master in mixed precision) and the moments.
  void step(float lr, float grad_scale, const OwnedFn& params, const OwnedFn& grads);
  // Steps with LAMB from now on. `spans` are the parameter tensors as [begin, end) ranges of partition elements,
  // sorted and disjoint: each gets its own trust ratio, so each must lie whole in this rank's partition.
  void use_lamb(const cpu::LambParams& hyper, std::vector<std::pair<int64_t, int64_t>> spans);
  void set_betas(float beta1, float beta2) {
    hyper_.beta1 = lamb_hyper_.beta1 = beta1;
    hyper_.beta2 = lamb_hyper_.beta2 = beta2;
  }
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step) { step_ = step; }
  const cpu::AdamParams& hyper() const { return hyper_; }

  // Mixed precision: the fp32 master weights of partition elements [begin, begin + n), read or set.
  void read_master(int64_t begin, int64_t n, float* out);
  void write_master(int64_t begin, int64_t n, const float* in);

 private:
  void step_lamb(float lr, float grad_scale, const OwnedFn& params, const OwnedFn& grads);
  // f(span index, partition offset, count) for each piece of [begin, begin + count) that lies in a span.
  template <typename F>
  void for_spans(int64_t begin, int64_t count, F&& f) const;

  const PartitionLayout& layout_;
  OptimizerStateStore& state_;
  cpu::AdamParams hyper_;
  ZeroPrecision precision_;
  int64_t step_ = 0;
  bool lamb_ = false;
  cpu::LambParams lamb_hyper_;
  std::vector<std::pair<int64_t, int64_t>> spans_;
  // Mixed precision's gradients widened to fp32, one piece at a time, for LAMB and the unfused Adam (the CPU Adam
  // widens in registers): allocated at first use.
  const Tensor& wide_grads();
  Tensor wide_grads_;
};

}  // namespace ds::zero
