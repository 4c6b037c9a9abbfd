// The optimizer step over the state store (see the header). Gradients are summed over ranks by the collectives and
// divided by N here (and in the norm), so a run at N ranks with micro-batch B follows the single-process run with
// micro-batch N*B up to rounding. Adam is elementwise, so stepping tile by tile and unit by unit gives the same bits
// as one call over the whole partition.
//
// Note [Mixed precision]
// With fp16 or bf16 the parameter storage holds 16-bit parameters (stages 0-2: all of them; stage 3: the owned
// chunks) and gradients are kept in the accumulation dtype; the model never sees either. Every unit is therefore
// fetched like a stage-3 unit (parameter_coordinator.h): before its forward and backward its 16-bit parameters
// (all-gathered first at stage 3) are widened into a pooled fp32 buffer the model computes with, released after
// use. Its gradients land in fp32, are rounded to the accumulation dtype when the unit's backward ends, and are
// added to the full gradients (stages 0-1) or reduce-scattered in that dtype into the owned partition (stages 2-3;
// gradient_reducer.h). The step widens each owned gradient chunk to fp32, updates the fp32 master chunk (optimizer
// state, in the store) with Adam and rounds it back into the 16-bit parameters, which stages 1-2 then all-gather
// in 16 bits. A loss-scaled gradient that overflows shows as an inf or NaN norm, and the engine skips the step.
// Activations stay in fp32: on the CPU the kernels compute in fp32 from 16-bit weights, so the rounding of weights
// and gradients is mixed precision's, the arithmetic is not.
#include "ds/zero/optimizer_step.h"

#include <algorithm>

#include "ds/core/error.h"
#include "ds/ops/ops.h"

namespace ds::zero {

OptimizerStep::OptimizerStep(const PartitionLayout& layout, OptimizerStateStore& state, const cpu::AdamParams& hyper,
                             const ZeroPrecision& precision)
    : layout_(layout), state_(state), hyper_(hyper), precision_(precision) {
  DS_ASSERT(state.numel() == layout.partition_numel(), "a state store of {} elements for a partition of {}",
            state.numel(), layout.partition_numel());
  DS_ASSERT(state.has_master() == precision.mixed(), "the master weights exist exactly in mixed precision");
  DS_ASSERT(precision.mixed() || precision.grads == DType::f32, "fp32 parameters need fp32 gradients");
  if (precision.mixed()) {
    const int64_t piece = std::min(layout.max_chunk(), state.tile_numel());
    wide_grads_ = Tensor::zeros({std::max<int64_t>(piece, 1)}, DType::f32, Category::comm_buffer);
  }
}

void OptimizerStep::step(float lr, float grad_scale, const OwnedFn& params, const OwnedFn& grads) {
  ++step_;
  cpu::AdamParams p = hyper_;
  p.lr = lr;
  p.step = step_;
  const float scale = grad_scale / static_cast<float>(layout_.world());
  const StateMask which = state_.kinds();
  for (int64_t t = 0; t < state_.tile_count(); ++t) {
    if (t + 1 < state_.tile_count()) state_.prefetch(t + 1, which);
    const StateTile tile = state_.acquire(t, which, TileAccess::read_write);
    layout_.for_partition(tile.begin, tile.begin + tile.count, [&](size_t unit, int64_t part, int64_t count) {
      const int64_t in_chunk = part - layout_[unit].part_offset, in_tile = part - tile.begin;
      Tensor param = params(unit).narrow(in_chunk, count);
      const Tensor grad = grads(unit).narrow(in_chunk, count);
      const Tensor m = tile.view(StateKind::exp_avg).narrow(in_tile, count);
      const Tensor v = tile.view(StateKind::exp_avg_sq).narrow(in_tile, count);
      if (!precision_.mixed()) {
        ops::adamw_step(param, grad, m, v, p, scale);
        return;
      }
      const Tensor master = tile.view(StateKind::master).narrow(in_tile, count);
      ops::adamw_step(master, grad, m, v, p, scale, wide_grads_);
      param.copy_from(master);  // rounded into the 16-bit parameters
    });
    state_.release(tile);
  }
}

void OptimizerStep::read_master(int64_t begin, int64_t n, float* out) {
  read_state(state_, StateKind::master, begin, n, out);
}

void OptimizerStep::write_master(int64_t begin, int64_t n, const float* in) {
  write_state(state_, StateKind::master, begin, n, in);
}

}  // namespace ds::zero
