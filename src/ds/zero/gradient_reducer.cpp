// What both gradient reducers share (see the header): bucket sizing, the fp32 landing pool, gradient views, the
// accumulation and the norm. The two reducers are full_gradient_reducer.cpp and partitioned_gradient_reducer.cpp.
#include "ds/zero/gradient_reducer.h"

#include <algorithm>
#include <cmath>

#include "ds/comm/fold.h"
#include "ds/core/error.h"
#include "ds/ops/ops.h"

namespace ds::zero {
namespace {

// reduce_bucket_size rounded down to a multiple of N (at least N), capped at the model's padded size.
int64_t bucket_capacity(int64_t reduce_bucket_size, const PartitionLayout& layout) {
  const int64_t N = layout.world();
  const int64_t b = std::max(N, reduce_bucket_size / N * N);
  return std::max<int64_t>(std::min(b, layout.padded_numel()), N);
}

constexpr int64_t kParallelBlock = 1 << 16;  // elements per OpenMP work item of an accumulation

}  // namespace

GradientReducer::GradientReducer(const PartitionLayout& layout, comm::Communicator& comm, RowExchange& rows,
                                 const Options& options)
    : layout_(layout),
      comm_(comm),
      rows_(rows),
      options_(options),
      bucket_numel_(bucket_capacity(options.bucket_numel, layout)) {
  DS_CHECK_AS(ConfigError, options.bucket_numel > 0,
              "[zero] zero_optimization.reduce_bucket_size must be positive, found {}", options.bucket_numel);
  DS_ASSERT(comm.size() == layout.world(), "a layout for {} ranks on a communicator of {}", layout.world(),
            comm.size());
}

Tensor GradientReducer::take_landing(int64_t n) {
  if (landing_numel_ == 0) {
    // Every unit that lands outside a bucket fits in a buffer of the largest unit (allocated once, on first use).
    landing_numel_ = layout_.largest_unit();
  }
  DS_ASSERT(n <= landing_numel_, "a landing of {} elements from buffers of {}", n, landing_numel_);
  for (size_t i = 0; i < landing_pool_.size(); ++i) {
    if (landing_busy_[i]) continue;
    landing_busy_[i] = true;
    return landing_pool_[i].slice_flat(0, {n});
  }
  landing_pool_.push_back(Tensor::empty({landing_numel_}, DType::f32, Category::comm_buffer));
  landing_busy_.push_back(true);
  return landing_pool_.back().slice_flat(0, {n});
}

void GradientReducer::return_landing(const Tensor& buf) {
  for (size_t i = 0; i < landing_pool_.size(); ++i) {
    if (landing_pool_[i].raw() == buf.raw()) {
      landing_busy_[i] = false;
      return;
    }
  }
  DS_ASSERT(false, "returned a landing buffer that is not from the pool");
}

void GradientReducer::bind_grads(size_t unit, const Tensor& buf) {
  const UnitLayout& u = layout_[unit];
  for (nn::Parameter* p : u.unit->params) p->grad = buf.slice_flat(p->offset - u.offset, p->shape);
}

void GradientReducer::unbind_grads(size_t unit) {
  for (nn::Parameter* p : layout_[unit].unit->params) p->grad = Tensor();
}

void GradientReducer::wait_quietly(const comm::WorkPtr& work) {
  if (!work) return;
  try {
    work->wait();
  } catch (...) {
  }
}

namespace {

// f(at, len) over [0, n) in blocks of kParallelBlock, in parallel when there is more than one.
template <typename F>
void for_blocks(int64_t n, F&& f) {
  const int64_t blocks = (n + kParallelBlock - 1) / kParallelBlock;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) f(b * kParallelBlock, std::min(kParallelBlock, n - b * kParallelBlock));
}

}  // namespace

void GradientReducer::accumulate(void* dst, const void* src, int64_t n) const {
  const size_t es = dtype_size(options_.grads);
  for_blocks(n, [&](int64_t at, int64_t len) {
    comm::fold_into(static_cast<std::byte*>(dst) + at * es, static_cast<const std::byte*>(src) + at * es,
              static_cast<size_t>(len), options_.grads);
  });
}

void GradientReducer::accumulate_f32(void* dst, const float* src, int64_t n) const {
  const size_t es = dtype_size(options_.grads);
  for_blocks(n, [&](int64_t at, int64_t len) {
    comm::fold_f32_into(static_cast<std::byte*>(dst) + at * es, options_.grads, src + at, static_cast<size_t>(len));
  });
}

void GradientReducer::set_norm_group(comm::Communicator* group, std::vector<std::pair<int64_t, int64_t>> skip) {
  norm_group_ = group && group->size() > 1 ? group : nullptr;
  std::sort(skip.begin(), skip.end());
  norm_skip_ = std::move(skip);
}

double GradientReducer::local_sum_squares() {
  double local = 0;
  for (size_t i = 0; i < layout_.size(); ++i) {
    const Tensor chunk = owned_chunk(i);
    if (norm_skip_.empty()) {
      local += ops::sum_squares(chunk);
      continue;
    }
    // The pieces of the chunk's flat range [own, own + chunk) outside every skipped range.
    const int64_t begin = layout_[i].own, end = begin + layout_[i].chunk;
    int64_t at = begin;
    auto piece = [&](int64_t lo, int64_t hi) {
      if (lo < hi) local += ops::sum_squares(chunk.slice_flat(lo - begin, {hi - lo}));
    };
    for (const auto& [skip_lo, skip_hi] : norm_skip_) {
      if (skip_hi <= at) continue;
      if (skip_lo >= end) break;
      piece(at, std::min(skip_lo, end));
      at = std::max(at, skip_hi);
    }
    piece(at, end);
  }
  return local;
}

void GradientReducer::set_local(bool local) {
  DS_ASSERT(!local || (layout_.replicated() && !norm_group_), "local gradients need the replicated layout");
  local_ = local;
}

double GradientReducer::grad_norm() {
  drain();
  double total = local_sum_squares();
  if (local_) {  // each rank's own gradient: the root mean square of the ranks' norms
    float t = static_cast<float>(total);
    comm_.all_reduce(&t, 1, DType::f32);
    return std::sqrt(static_cast<double>(t) / layout_.world());
  }
  if (!layout_.replicated()) {  // else every rank holds the whole sum
    float t = static_cast<float>(total);
    comm_.all_reduce(&t, 1, DType::f32);
    total = t;
  }
  if (norm_group_) {
    float t = static_cast<float>(total);
    norm_group_->all_reduce(&t, 1, DType::f32);
    total = t;
  }
  return std::sqrt(total) / layout_.world();
}

}  // namespace ds::zero
