// The compressed stages of 1-bit Adam and 0/1 Adam (Note [Compressed Adam] in the header). Every pass walks the
// state tiles and, inside each, the pieces of the parameter tensors; what the 1-bit all-reduce averages is staged
// tensor by tensor (unpadded, in tensor order) and copied back after it.
#include "ds/zero/compressed_adam.h"

#include <algorithm>

#include "ds/core/error.h"
#include "ds/ops/ops.h"

namespace ds::zero {

using Compression = config::OptimizerConfig::Compression;

// One 1-bit scale per 256 elements of each chunk (Note [1-bit all-reduce] in comm/onebit.h says why).
constexpr int64_t kScaleBlock = 256;

namespace {
std::vector<int64_t> sizes_of(const std::vector<std::pair<int64_t, int64_t>>& tensors) {
  std::vector<int64_t> sizes;
  for (const auto& [begin, end] : tensors) sizes.push_back(end - begin);
  return sizes;
}
}  // namespace

struct CompressedAdam::Piece {
  Tensor param;   // in the parameters' dtype
  Tensor grad;    // in the gradients' dtype: this rank's own
  Tensor w;       // fp32 weights: the master in mixed precision, else param
  Tensor m, v;    // moments
  Tensor base;    // 0/1 Adam's weights at the last synchronisation (undefined otherwise)
  Tensor staged;  // the piece's place in the staging buffer
};

CompressedAdam::CompressedAdam(const PartitionLayout& layout, OptimizerStateStore& state,
                               const ZeroPrecision& precision, comm::Communicator& comm,
                               const config::OptimizerConfig& options,
                               const std::vector<std::pair<int64_t, int64_t>>& tensors)
    : layout_(layout),
      state_(state),
      precision_(precision),
      options_(options),
      tensors_(tensors),
      onebit_(comm, sizes_of(tensors), kScaleBlock) {
  DS_ASSERT(options.compression != Compression::none, "CompressedAdam without a compressed optimizer");
  DS_ASSERT(layout.replicated(), "the compressed optimizers run over the replicated layout of stage 0");
  int64_t at = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    DS_ASSERT(tensors_[i].first <= tensors_[i].second && (i == 0 || tensors_[i - 1].second <= tensors_[i].first),
              "the tensors are sorted, disjoint partition ranges");
    staged_offset_.push_back(at);
    at += tensors_[i].second - tensors_[i].first;
  }
  staging_ = Tensor::zeros({std::max<int64_t>(at, 1)}, DType::f32, Category::comm_buffer);
  if (options.compression == Compression::zero_one_adam)
    base_ = Tensor::zeros({std::max<int64_t>(layout.partition_numel(), 1)}, DType::f32, Category::optimizer);
  if (precision.grads != DType::f32)
    wide_ = Tensor::zeros({std::max<int64_t>(std::min(layout.max_chunk(), state.tile_numel()), 1)}, DType::f32,
                          Category::comm_buffer);
}

bool CompressedAdam::exact(int64_t step) const {
  if (options_.compression == Compression::onebit_adam) return step <= options_.freeze_step;
  return step <= options_.var_freeze_step && step % var_interval_ == 0;
}

bool CompressedAdam::steps(int64_t step) const {
  return options_.compression == Compression::zero_one_adam || !exact(step);
}

bool CompressedAdam::local_stage(int64_t step) const {
  return options_.compression == Compression::zero_one_adam && step > options_.var_freeze_step;
}

template <typename F>
void CompressedAdam::for_pieces(int64_t begin, int64_t end, F&& f) const {
  auto it = std::upper_bound(tensors_.begin(), tensors_.end(), begin,
                             [](int64_t x, const std::pair<int64_t, int64_t>& t) { return x < t.second; });
  for (; it != tensors_.end() && it->first < end; ++it) {
    const int64_t lo = std::max(begin, it->first), hi = std::min(end, it->second);
    const size_t i = static_cast<size_t>(it - tensors_.begin());
    if (lo < hi) f(lo, staged_offset_[i] + (lo - it->first), hi - lo);
  }
}

template <typename F>
void CompressedAdam::for_each_piece(StateMask which, const OptimizerStep::OwnedFn& params,
                                    const OptimizerStep::OwnedFn& grads, F&& f) {
  if (precision_.mixed()) which = static_cast<StateMask>(which | mask_of(StateKind::master));
  for (int64_t t = 0; t < state_.tile_count(); ++t) {
    if (t + 1 < state_.tile_count()) state_.prefetch(t + 1, which);
    const StateTile tile = state_.acquire(t, which, TileAccess::read_write);
    layout_.for_partition(tile.begin, tile.begin + tile.count, [&](size_t unit, int64_t part, int64_t count) {
      for_pieces(part, part + count, [&](int64_t lo, int64_t staged, int64_t n) {
        const int64_t in_chunk = lo - layout_[unit].part_offset, in_tile = lo - tile.begin;
        Piece p;
        p.param = params(unit).narrow(in_chunk, n);
        p.grad = grads(unit).narrow(in_chunk, n);
        p.w = precision_.mixed() ? tile.view(StateKind::master).narrow(in_tile, n) : p.param;
        if (tile.view(StateKind::exp_avg).defined()) p.m = tile.view(StateKind::exp_avg).narrow(in_tile, n);
        if (tile.view(StateKind::exp_avg_sq).defined()) p.v = tile.view(StateKind::exp_avg_sq).narrow(in_tile, n);
        if (base_.defined()) p.base = base_.narrow(lo, n);
        p.staged = staging_.narrow(staged, n);
        f(p);
      });
    });
    state_.release(tile);
  }
}

void CompressedAdam::step(int64_t step, float lr, float grad_scale, const cpu::AdamParams& hyper,
                          const OptimizerStep::OwnedFn& params, const OptimizerStep::OwnedFn& grads) {
  DS_ASSERT(steps(step), "step {} is 1-bit Adam's warm-up, OptimizerStep's", step);
  const float b1 = hyper.beta1, eps = hyper.eps, wd = hyper.weight_decay;
  float* staging = staging_.data<float>();
  auto apply = [&](Piece& p) {
    ops::frozen_adam_apply(p.w, p.m, p.v, lr, eps, wd);
    if (precision_.mixed()) p.param.copy_from(p.w);  // rounded into the 16-bit parameters
  };
  if (options_.compression == Compression::onebit_adam) {
    for_each_piece(mask_of(StateKind::exp_avg), params, grads, [&](Piece& p) {
      ops::momentum_update(p.m, p.grad, b1, grad_scale, wide_);
      p.staged.copy_from(p.m);
    });
    onebit_.run(staging);
    for_each_piece(kMoments, params, grads, [&](Piece& p) {
      p.m.copy_from(p.staged);
      apply(p);
    });
    return;
  }
  if (exact(step)) {  // 0/1 Adam's variance step: both moments from the summed gradient, then the floored step
    cpu::LambParams moments;
    moments.beta1 = b1;
    moments.beta2 = hyper.beta2;
    const float mean = grad_scale / static_cast<float>(layout_.world());
    for_each_piece(kMoments, params, grads, [&](Piece& p) {
      ops::lamb_moments(p.grad, p.m, p.v, moments, mean, wide_);
      apply(p);
    });
    return;
  }
  if (!local_stage(step)) {  // 0/1 Adam between variance steps: the momentum takes the 1-bit averaged gradient
    for_each_piece(mask_of(StateKind::exp_avg), params, grads, [&](Piece& p) {
      p.staged.zero_();
      ops::momentum_update(p.staged, p.grad, 0.0f, grad_scale, wide_);  // staged = grad * grad_scale
    });
    onebit_.run(staging);
    for_each_piece(kMoments, params, grads, [&](Piece& p) {
      ops::momentum_update(p.m, p.staged, b1, 1.0f);
      apply(p);
    });
    return;
  }
  if (!base_valid_) {  // entering the local steps (or resuming into them): the errors so far were the gradients'
    onebit_.reset_errors();
    for_each_piece(mask_of(StateKind::exp_avg), params, grads, [&](Piece& p) { p.base.copy_from(p.w); });
    base_valid_ = true;
  }
  lrs_ += lr;
  const bool sync = step % local_interval_ == 0;
  for_each_piece(kMoments, params, grads, [&](Piece& p) {
    ops::momentum_update(p.m, p.grad, b1, grad_scale, wide_);
    apply(p);
    if (sync) ops::local_steps_delta(p.staged, p.w, p.base, p.v, eps);
  });
  if (!sync) return;
  onebit_.run(staging);
  for_each_piece(kMoments, params, grads, [&](Piece& p) {
    ops::local_steps_apply(p.w, p.m, p.v, p.base, p.staged, eps, static_cast<float>(lrs_));
    if (precision_.mixed()) p.param.copy_from(p.w);
  });
  lrs_ = 0;
}

void CompressedAdam::after_step(int64_t step) {
  if (options_.compression != Compression::zero_one_adam) return;
  if (!local_stage(step)) {
    if (step % var_interval_ == 0 && ++var_counter_ == options_.var_update_scaler) {
      var_counter_ = 0;
      var_interval_ *= 2;
    }
    return;
  }
  if (++local_counter_ == options_.local_step_scaler) {
    local_counter_ = 0;
    local_interval_ = std::min(options_.local_step_clipper, local_interval_ * 2);
  }
}

void CompressedAdam::restore(int64_t steps) {
  var_interval_ = local_interval_ = 1;
  var_counter_ = local_counter_ = 0;
  for (int64_t s = 1; s <= steps; ++s) after_step(s);
  lrs_ = 0;
  onebit_.reset_errors();
  base_valid_ = false;  // the next local step starts from the weights as loaded
}

}  // namespace ds::zero
