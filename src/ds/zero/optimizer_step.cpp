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
}

const Tensor& OptimizerStep::wide_grads() {
  if (!wide_grads_.defined() && precision_.mixed()) {
    const int64_t piece = std::min(layout_.max_chunk(), state_.tile_numel());
    wide_grads_ = Tensor::zeros({std::max<int64_t>(piece, 1)}, DType::f32, Category::comm_buffer);
  }
  return wide_grads_;
}

void OptimizerStep::use_lamb(const cpu::LambParams& hyper, std::vector<std::pair<int64_t, int64_t>> spans) {
  for (size_t i = 0; i < spans.size(); ++i) {
    DS_ASSERT(spans[i].first < spans[i].second && spans[i].second <= layout_.partition_numel() &&
                  (i == 0 || spans[i - 1].second <= spans[i].first),
              "LAMB spans are sorted, disjoint and inside the partition");
  }
  lamb_ = true;
  lamb_hyper_ = hyper;
  spans_ = std::move(spans);
}

template <typename F>
void OptimizerStep::for_spans(int64_t begin, int64_t count, F&& f) const {
  auto it = std::upper_bound(spans_.begin(), spans_.end(), begin,
                             [](int64_t x, const std::pair<int64_t, int64_t>& s) { return x < s.second; });
  for (; it != spans_.end() && it->first < begin + count; ++it) {
    const int64_t lo = std::max(begin, it->first), hi = std::min(begin + count, it->second);
    if (lo < hi) f(static_cast<size_t>(it - spans_.begin()), lo, hi - lo);
  }
}

// Note [LAMB over tiles]
// FusedLamb's trust ratio needs a whole parameter's norms before any of it moves, so LAMB takes two passes over
// the state tiles: the first updates the moments and sums each parameter's |w|^2 and |u|^2 (in tile and piece
// order, so the sums are reproducible), the second applies each parameter's step. Padding elements belong to no
// span: their gradients, moments and parameters stay zero.
void OptimizerStep::step_lamb(float lr, float grad_scale, const OwnedFn& params, const OwnedFn& grads) {
  cpu::LambParams p = lamb_hyper_;
  p.lr = lr;
  p.step = step_;
  const float scale = grad_scale / static_cast<float>(layout_.world());
  const StateMask which = state_.kinds();
  std::vector<double> w_sq(spans_.size(), 0.0), u_sq(spans_.size(), 0.0);
  auto for_pieces = [&](auto&& f) {
    for (int64_t t = 0; t < state_.tile_count(); ++t) {
      if (t + 1 < state_.tile_count()) state_.prefetch(t + 1, which);
      const StateTile tile = state_.acquire(t, which, TileAccess::read_write);
      layout_.for_partition(tile.begin, tile.begin + tile.count, [&](size_t unit, int64_t part, int64_t count) {
        for_spans(part, count, [&](size_t span, int64_t lo, int64_t n) {
          const int64_t in_chunk = lo - layout_[unit].part_offset, in_tile = lo - tile.begin;
          Tensor param = params(unit).narrow(in_chunk, n);
          const Tensor weights =
              precision_.mixed() ? tile.view(StateKind::master).narrow(in_tile, n) : param;  // fp32 either way
          f(span, param, weights, grads(unit).narrow(in_chunk, n), tile.view(StateKind::exp_avg).narrow(in_tile, n),
            tile.view(StateKind::exp_avg_sq).narrow(in_tile, n));
        });
      });
      state_.release(tile);
    }
  };
  for_pieces([&](size_t span, const Tensor&, const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v) {
    ops::lamb_moments(g, m, v, p, scale, wide_grads());
    w_sq[span] += ops::sum_squares(w);
    u_sq[span] += ops::lamb_update_sum_squares(w, m, v, p);
  });
  const float step_size = cpu::lamb_step_size(p);
  for_pieces([&](size_t span, Tensor& param, const Tensor& w, const Tensor&, const Tensor& m, const Tensor& v) {
    ops::lamb_apply(w, m, v, p, step_size * cpu::lamb_coefficient(w_sq[span], u_sq[span], p));
    if (precision_.mixed()) param.copy_from(w);  // rounded into the 16-bit parameters
  });
}

void OptimizerStep::step(float lr, float grad_scale, const OwnedFn& params, const OwnedFn& grads) {
  ++step_;
  if (lamb_) {
    step_lamb(lr, grad_scale, params, grads);
    return;
  }
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
      if (master.device().is_cpu() && param.device().is_cpu() && grad.device().is_cpu()) {
        ops::adamw_step_mixed(master, grad, m, v, param, p, scale);  // rounded into the 16-bit parameters
        return;
      }
      ops::adamw_step(master, grad, m, v, p, scale, wide_grads());
      param.copy_from(master);
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
