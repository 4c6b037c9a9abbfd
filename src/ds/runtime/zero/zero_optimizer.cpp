// ZeRO stages 0-2: reductions, owned-chunk Adam, all-gather. See the header for the layout.
// Gradients are summed over ranks by the collectives and divided by N in the step (and the norm), so a run at N
// ranks with micro-batch B follows the single-process run with micro-batch N*B up to rounding.
#include "ds/runtime/zero/zero_optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ds/core/log.h"

namespace ds {

ZeroOptimizer::ZeroOptimizer(ParameterStore& store, Communicator& comm, const ZeroConfig& zero,
                             const cpu::AdamParams& hyper)
    : store_(store),
      comm_(comm),
      stage_(zero.stage),
      overlap_(zero.overlap_comm),
      rank_(comm.rank()),
      world_(comm.size()),
      hyper_(hyper) {
  DS_CHECK_AS(ConfigError, stage_ >= 0 && stage_ <= 3,
              "[zero] zero_optimization.stage must be 0, 1, 2 or 3, found {}", stage_);
  DS_ASSERT(store.materialized());
  DS_ASSERT(keeps_full_parameters(stage_) == store.flat_params().defined(),
            "stage {} needs a store materialized {} parameters", stage_,
            keeps_full_parameters(stage_) ? "with" : "without");
  DS_ASSERT(keeps_full_gradients(stage_) == store.flat_grads().defined(),
            "stage {} needs a store materialized {} gradients", stage_,
            keeps_full_gradients(stage_) ? "with" : "without");
  for (const ParamUnit& u : store.units()) {
    DS_ASSERT(u.padded_numel % world_ == 0, "unit {} of {} elements is not aligned to {} ranks", u.name,
              u.padded_numel, world_);
    const int64_t chunk = stage_ == 0 ? u.padded_numel : u.padded_numel / world_;
    units_.push_back({&u, chunk, partition_numel_});
    partition_numel_ += chunk;
    max_chunk_ = std::max(max_chunk_, chunk);
  }
  int64_t largest = 0;
  for (const UnitState& u : units_) largest = std::max(largest, u.unit->padded_numel);
  if (stage_ >= 1 && rank_ == 0 && zero.reduce_bucket_size < largest) {
    log_info("[zero] reduce_bucket_size {} is smaller than the largest gather unit ({} elements); gradients are "
             "reduced one whole unit at a time, so a bucket holds up to {} elements",
             zero.reduce_bucket_size, largest, largest);
  }
  m_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  v_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  if (stage_ >= 1) recv_ = Tensor::zeros({2 * max_chunk_}, DType::f32, Category::comm_buffer);
  if (stage_ == 1 || stage_ == 2) gather_send_ = Tensor::zeros({max_chunk_}, DType::f32, Category::comm_buffer);
  if (stage_ == 3) {
    own_params_ = Tensor::zeros({partition_numel_}, DType::f32, Category::param);
    gathered_.resize(units_.size());
    for (const UnitState& u : units_) large_numel_ = std::max(large_numel_, u.unit->padded_numel);
    inflight_buf_.resize(units_.size());
    inflight_.resize(units_.size());
    prefetch_limit_ = zero.stage3_prefetch_bucket_size;
    max_live_ = zero.stage3_max_live_parameters;
    max_reuse_ = zero.stage3_max_reuse_distance;
    for (const UnitState& u : units_)
      persistent_.push_back(u.unit->numel <= zero.stage3_param_persistence_threshold);
  }
  if (stage_ >= 2) {
    part_grads_ = Tensor::zeros({partition_numel_}, DType::f32, Category::grad);
    for (const UnitState& u : units_) bucket_numel_ = std::max(bucket_numel_, u.unit->padded_numel);
    buckets_ = Tensor::zeros({std::max<int64_t>(2 * bucket_numel_, 1)}, DType::f32, Category::comm_buffer);
    unit_bucket_.assign(units_.size(), -1);
  }
}

ZeroOptimizer::~ZeroOptimizer() {
  for (auto& p : pending_) {
    try {
      p.work->wait();
    } catch (...) {
    }
  }
}

const ZeroOptimizer::UnitState& ZeroOptimizer::state_of(const Module& m) const {
  for (const UnitState& u : units_)
    if (u.unit->owner == &m) return u;
  DS_ASSERT(false, "module {} is not a gather unit of this model", m.name());
  return units_.front();
}

float* ZeroOptimizer::owned_params(const UnitState& u) const {
  if (stage_ == 3) return own_params_.data<float>() + u.part_offset;
  const int64_t start = u.unit->offset + (stage_ == 0 ? 0 : rank_ * u.chunk);
  return store_.flat_params().data<float>() + start;
}

float* ZeroOptimizer::owned_grads(const UnitState& u) {
  if (stage_ >= 2) return part_grads_.data<float>() + u.part_offset;
  const int64_t start = u.unit->offset + (stage_ == 0 ? 0 : rank_ * u.chunk);
  return store_.flat_grads().data<float>() + start;
}

template <typename F>
void ZeroOptimizer::for_owned(int64_t begin, int64_t end, F&& f) const {
  // The first unit that ends after `begin` (units are in flat-buffer order).
  auto it = std::upper_bound(units_.begin(), units_.end(), begin, [](int64_t x, const UnitState& u) {
    return x < u.unit->offset + u.unit->padded_numel;
  });
  for (; it != units_.end() && it->unit->offset < end; ++it) {
    const int64_t own = it->unit->offset + (stage_ == 0 ? 0 : rank_ * it->chunk);
    const int64_t lo = std::max(begin, own), hi = std::min(end, own + it->chunk);
    if (lo < hi) f(lo, it->part_offset + (lo - own), hi - lo);
  }
}

void ZeroOptimizer::set_state(State which, int64_t flat_offset, const float* values, int64_t n) {
  DS_ASSERT(flat_offset >= 0 && n >= 0 && flat_offset + n <= store_.padded_numel());
  if (which == State::param && stage_ < 3) {
    std::memcpy(store_.flat_params().data<float>() + flat_offset, values, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  for (const auto& g : gathered_) DS_ASSERT(!g.defined(), "set_state while a unit is gathered");
  float* dst = which == State::param ? own_params_.data<float>() : which == State::exp_avg ? m_.data<float>()
                                                                                          : v_.data<float>();
  for_owned(flat_offset, flat_offset + n, [&](int64_t flat, int64_t part, int64_t count) {
    std::memcpy(dst + part, values + (flat - flat_offset), static_cast<size_t>(count) * sizeof(float));
  });
}

void ZeroOptimizer::copy_owned_params(float* out) const {
  for (const UnitState& u : units_)
    std::memcpy(out + u.part_offset, owned_params(u), static_cast<size_t>(u.chunk) * sizeof(float));
}

void ZeroOptimizer::begin_batch() {
  drain(0);
  if (stage_ == 3) {
    if (recording_ && !trace_.empty()) trace_complete_ = true;  // the previous step recorded a whole trace
    recording_ = !trace_complete_;
    if (recording_) trace_.clear();
    trace_pos_ = 0;
    in_step_ = true;
  }
  if (stage_ >= 2) {
    part_grads_.zero_();
  } else {
    store_.zero_grad();
  }
}

void ZeroOptimizer::reduce_unit_full_grads(const UnitState& u) {
  float* unit_grads = store_.flat_grads().data<float>() + u.unit->offset;
  float* recv = recv_.data<float>();
  comm_.reduce_scatter(unit_grads, recv, static_cast<size_t>(u.chunk), DType::f32);
  std::memcpy(unit_grads + rank_ * u.chunk, recv, static_cast<size_t>(u.chunk) * sizeof(float));
}

void ZeroOptimizer::end_micro_batch(bool last) {
  if (stage_ >= 2 || (overlap_ && last)) {  // overlapped stage 0-1 reductions were issued by post_backward
    drain(0);
    return;
  }
  if (!last) return;
  if (stage_ == 0) {
    comm_.all_reduce(store_.flat_grads().data<float>(), static_cast<size_t>(store_.padded_numel()), DType::f32);
  } else {
    for (const UnitState& u : units_) reduce_unit_full_grads(u);
  }
}

int ZeroOptimizer::free_bucket() {
  for (;;) {
    for (int b = 0; b < 2; ++b)
      if (!bucket_busy_[b]) return b;
    drain(pending_.size() - 1);  // wait for the oldest reduction, which frees its bucket
  }
}

void ZeroOptimizer::drain(size_t keep_in_flight) {
  while (pending_.size() > keep_in_flight) {
    Pending p = pending_.front();
    pending_.pop_front();
    p.work->wait();
    const UnitState& u = units_[p.unit];
    const float* recv = recv_.defined() ? recv_.data<float>() + (p.bucket & 1) * max_chunk_ : nullptr;
    if (p.finish == Finish::accumulate) {
      cpu::add_inplace(part_grads_.data<float>() + u.part_offset, recv, static_cast<size_t>(u.chunk));
      if (p.bucket >= 0 && p.bucket < 2) bucket_busy_[p.bucket] = false;
    } else if (p.finish == Finish::copy_owned) {
      std::memcpy(owned_grads(u), recv, static_cast<size_t>(u.chunk) * sizeof(float));
    }
  }
}

// Note [Stage-3 trace]
// During the first training step the units are fetched in some order (embeddings, blocks, ln_f, then the head
// and the blocks in reverse); that order is the trace. From the next step on, each fetch walks the trace ahead and
// starts all-gathers for upcoming units on the communicator's thread while the current unit computes, as long as
// the elements in flight stay within stage3_prefetch_bucket_size and everything gathered or in flight within
// stage3_max_live_parameters. A unit about to be released stays gathered if the trace uses it again within
// stage3_max_reuse_distance elements of other units. A fetch that differs from the trace drops it (recorded again
// next step). Evaluation passes between steps fetch plainly, outside the trace.
// Gather buffers are pooled: a released unit's buffer goes back to the pool and the next gather takes it, so the
// pool holds as many buffers as units were ever gathered or in flight at once (which stage3_max_live_parameters
// and the reuse distance bound). Every unit of at least a quarter of the largest unit's size gets a buffer of
// the largest size, so blocks and wte slices of slightly different sizes share buffers.
Tensor ZeroOptimizer::take_buffer(size_t index) {
  const int64_t n = units_[index].unit->padded_numel;
  const int64_t size = 4 * n >= large_numel_ ? large_numel_ : n;
  for (size_t i = 0; i < free_buffers_.size(); ++i) {
    if (free_buffers_[i].numel() != size) continue;
    Tensor buf = free_buffers_[i];
    free_buffers_.erase(free_buffers_.begin() + static_cast<std::ptrdiff_t>(i));
    return buf;
  }
  return Tensor::empty({size}, DType::f32, Category::comm_buffer);
}

void ZeroOptimizer::return_buffer(Tensor buf) { free_buffers_.push_back(std::move(buf)); }

void ZeroOptimizer::gather(size_t index) {
  if (gathered_[index].defined()) return;
  const UnitState& u = units_[index];
  Tensor buf;
  if (inflight_[index]) {
    inflight_[index]->wait();
    inflight_[index].reset();
    buf = inflight_buf_[index];
    inflight_buf_[index] = Tensor();
    ++prefetch_hits_;
  } else {
    buf = take_buffer(index);
    comm_.all_gather(owned_params(u), buf.data<float>(), static_cast<size_t>(u.chunk), DType::f32);
    live_numel_ += u.unit->padded_numel;
  }
  for (Parameter* p : u.unit->params) p->data = buf.slice_flat(p->offset - u.unit->offset, p->shape);
  gathered_[index] = buf;
}

void ZeroOptimizer::prefetch() {
  int64_t in_flight = 0;
  for (size_t i = 0; i < units_.size(); ++i)
    if (inflight_[i]) in_flight += units_[i].unit->padded_numel;
  for (size_t pos = trace_pos_; pos < trace_.size(); ++pos) {
    const size_t k = trace_[pos];
    if (gathered_[k].defined() || inflight_[k]) continue;
    const int64_t n = units_[k].unit->padded_numel;
    if (in_flight + n > prefetch_limit_ || live_numel_ + n > max_live_) break;
    inflight_buf_[k] = take_buffer(k);
    inflight_[k] = comm_.all_gather_async(owned_params(units_[k]), inflight_buf_[k].data<float>(),
                                          static_cast<size_t>(units_[k].chunk), DType::f32);
    in_flight += n;
    live_numel_ += n;
    ++prefetches_issued_;
  }
}

void ZeroOptimizer::fetch(size_t index) {
  if (in_step_) {
    if (recording_) {
      trace_.push_back(index);
    } else if (trace_complete_) {
      if (trace_pos_ < trace_.size() && trace_[trace_pos_] == index) {
        ++trace_pos_;
      } else {
        log_debug("[zero] stage-3 trace invalidated at fetch {}: expected unit {}, got {}", trace_pos_,
                  trace_pos_ < trace_.size() ? units_[trace_[trace_pos_]].unit->name : std::string("(end)"),
                  units_[index].unit->name);
        trace_complete_ = false;
      }
    }
  }
  gather(index);
  if (in_step_ && trace_complete_) prefetch();
}

void ZeroOptimizer::release(size_t index, bool even_persistent) {
  if (!gathered_[index].defined() || (persistent_[index] && !even_persistent)) return;
  if (!even_persistent && in_step_ && trace_complete_) {
    int64_t distance = 0;
    for (size_t pos = trace_pos_; pos < trace_.size() && distance <= max_reuse_; ++pos) {
      if (trace_[pos] == index) return;  // used again soon: keep it
      distance += units_[trace_[pos]].unit->padded_numel;
    }
  }
  for (Parameter* p : units_[index].unit->params) p->data = Tensor();
  return_buffer(gathered_[index]);
  gathered_[index] = Tensor();
  live_numel_ -= units_[index].unit->padded_numel;
}

void ZeroOptimizer::pre_forward(Module& m) {
  if (stage_ == 3) fetch(index_of(m));
}

void ZeroOptimizer::post_forward(Module& m) {
  if (stage_ == 3) release(index_of(m), false);
}

void ZeroOptimizer::pre_backward(Module& m) {
  if (stage_ < 2) return;
  const size_t index = index_of(m);
  const UnitState& u = units_[index];
  if (stage_ == 3) fetch(index);
  const int b = free_bucket();
  bucket_busy_[b] = true;
  unit_bucket_[index] = b;
  Tensor bucket = buckets_.slice_flat(b * bucket_numel_, {u.unit->padded_numel});
  bucket.zero_();
  for (Parameter* p : u.unit->params) p->grad = bucket.slice_flat(p->offset - u.unit->offset, p->shape);
}

void ZeroOptimizer::post_backward(Module& m) {
  const size_t index = index_of(m);
  const UnitState& u = units_[index];
  if (stage_ < 2) {
    if (!overlap_ || !last_micro_) return;
    // The unit's full gradients are final: reduce them now, while backward continues with the next unit.
    float* unit_grads = store_.flat_grads().data<float>() + u.unit->offset;
    if (stage_ == 0) {
      pending_.push_back({index, comm_.all_reduce_async(unit_grads, static_cast<size_t>(u.unit->padded_numel),
                                                        DType::f32, ReduceOp::sum),
                          -1, Finish::none});
    } else {
      drain(1);  // two receive slots: at most one other reduction may still be in flight
      const int slot = next_slot_;
      next_slot_ ^= 1;
      pending_.push_back({index,
                          comm_.reduce_scatter_async(unit_grads, recv_.data<float>() + slot * max_chunk_,
                                                     static_cast<size_t>(u.chunk), DType::f32, ReduceOp::sum),
                          slot, Finish::copy_owned});
    }
    return;
  }
  const int b = unit_bucket_[index];
  for (Parameter* p : u.unit->params) p->grad = Tensor();
  // Bucket b reduces into receive slot b; the bucket is busy until drain() has accumulated the slot.
  WorkPtr w = comm_.reduce_scatter_async(buckets_.data<float>() + b * bucket_numel_,
                                         recv_.data<float>() + b * max_chunk_, static_cast<size_t>(u.chunk),
                                         DType::f32, ReduceOp::sum);
  pending_.push_back({index, w, b, Finish::accumulate});
  drain(overlap_ ? 1 : 0);
  if (stage_ == 3) release(index, false);
}

const float* ZeroOptimizer::slice_data(const Module& slice) {
  const size_t index = index_of(slice);
  if (stage_ < 3) return store_.flat_params().data<float>() + units_[index].unit->offset;
  DS_ASSERT(gathered_[index].defined(), "{} is used while not gathered", slice.name());
  return gathered_[index].data<float>();
}

float* ZeroOptimizer::slice_grads(const Module& slice) {
  const size_t index = index_of(slice);
  if (stage_ < 2) return store_.flat_grads().data<float>() + units_[index].unit->offset;
  DS_ASSERT(unit_bucket_[index] >= 0, "{} has no gradient bucket outside its backward", slice.name());
  return buckets_.data<float>() + unit_bucket_[index] * bucket_numel_;
}

const int32_t* ZeroOptimizer::gather_ids(const int32_t* ids, int64_t n) {
  int32_t count = static_cast<int32_t>(n);
  std::vector<int32_t> counts(static_cast<size_t>(world_));
  comm_.all_gather(&count, counts.data(), 1, DType::i32);
  for (int r = 0; r < world_; ++r) {
    DS_CHECK_AS(ShapeError, counts[r] == count,
                "[zero] rank {} passed {} rows to a row collective but rank {} passed {}; every rank must run the "
                "same micro-batch shape", r, counts[r], rank_, count);
  }
  if (row_ids_.numel() < world_ * n) row_ids_ = Tensor::empty({world_ * n}, DType::i32, Category::comm_buffer);
  comm_.all_gather(ids, row_ids_.data<int32_t>(), static_cast<size_t>(n), DType::i32);
  return row_ids_.data<int32_t>();
}

// Each rank fills the elements it owns of every requested row, zeros elsewhere; a reduce-scatter then hands each
// rank the sum for its own rows, which is the row itself (x + 0 = x exactly).
void ZeroOptimizer::lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) {
  const int64_t C = p.shape[1];
  if (stage_ < 3) {
    for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * C, p.data.data<float>() + ids[i] * C, C * sizeof(float));
    return;
  }
  const int32_t* all = gather_ids(ids, n);
  if (row_data_.numel() < world_ * n * C)
    row_data_ = Tensor::empty({world_ * n * C}, DType::f32, Category::comm_buffer);
  float* contrib = row_data_.data<float>();
  std::memset(contrib, 0, static_cast<size_t>(world_ * n * C) * sizeof(float));
  for (int64_t j = 0; j < world_ * n; ++j) {
    const int64_t begin = p.offset + int64_t(all[j]) * C;
    for_owned(begin, begin + C, [&](int64_t flat, int64_t part, int64_t count) {
      std::memcpy(contrib + j * C + (flat - begin), own_params_.data<float>() + part,
                  static_cast<size_t>(count) * sizeof(float));
    });
  }
  comm_.reduce_scatter(contrib, out, static_cast<size_t>(n * C), DType::f32);
}

// Every rank receives all ranks' rows and adds those elements it owns to its gradient partition, in rank order,
// so the result does not depend on timing.
void ZeroOptimizer::accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) {
  DS_ASSERT(stage_ >= 2, "row gradients are only partitioned from stage 2 on");
  const int64_t C = p.shape[1];
  drain(0);
  const int32_t* all = gather_ids(ids, n);
  if (row_data_.numel() < world_ * n * C)
    row_data_ = Tensor::empty({world_ * n * C}, DType::f32, Category::comm_buffer);
  float* all_rows = row_data_.data<float>();
  comm_.all_gather(rows, all_rows, static_cast<size_t>(n * C), DType::f32);
  for (int64_t j = 0; j < world_ * n; ++j) {
    const int64_t begin = p.offset + int64_t(all[j]) * C;
    for_owned(begin, begin + C, [&](int64_t flat, int64_t part, int64_t count) {
      cpu::add_inplace(part_grads_.data<float>() + part, all_rows + j * C + (flat - begin), static_cast<size_t>(count));
    });
  }
}

std::vector<float> ZeroOptimizer::full_parameters() {
  drain(0);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(store_.numel()));
  for (size_t i = 0; i < units_.size(); ++i) {
    const ParamUnit& u = *units_[i].unit;
    const bool was_gathered = stage_ != 3 || gathered_[i].defined();
    if (!was_gathered) gather(i);
    // A unit's elements before its padding are its parameters (or rows) in declaration order.
    const float* data = stage_ == 3 ? gathered_[i].data<float>() : store_.flat_params().data<float>() + u.offset;
    out.insert(out.end(), data, data + u.numel);
    if (!was_gathered) release(i, true);
  }
  return out;
}

double ZeroOptimizer::grad_norm() {
  drain(0);
  double local = 0;
  if (stage_ == 0) {
    local = cpu::sum_squares(store_.flat_grads().data<float>(), static_cast<size_t>(store_.padded_numel()));
    return std::sqrt(local) / world_;
  }
  for (const UnitState& u : units_) local += cpu::sum_squares(owned_grads(u), static_cast<size_t>(u.chunk));
  float total = static_cast<float>(local);
  comm_.all_reduce(&total, 1, DType::f32);
  return std::sqrt(static_cast<double>(total)) / world_;
}

void ZeroOptimizer::step(float lr, float grad_scale) {
  drain(0);
  ++step_;
  cpu::AdamParams p = hyper_;
  p.lr = lr;
  p.step = step_;
  const float scale = grad_scale / static_cast<float>(world_);
  for (const UnitState& u : units_) {
    cpu::adamw_step(owned_params(u), owned_grads(u), m_.data<float>() + u.part_offset,
                    v_.data<float>() + u.part_offset, static_cast<size_t>(u.chunk), p, scale);
  }
  if (stage_ == 0) return;
  if (stage_ == 3) {
    // The owned partitions are the parameters; gathered copies are now stale. Nothing is in flight: prefetch
    // only runs ahead within the step's trace, whose units have all been used.
    in_step_ = false;
    for (size_t i = 0; i < units_.size(); ++i) {
      if (inflight_[i]) gather(i);
      release(i, true);
    }
    return;
  }
  for (const UnitState& u : units_) {
    std::memcpy(gather_send_.data<float>(), owned_params(u), static_cast<size_t>(u.chunk) * sizeof(float));
    comm_.all_gather(gather_send_.data<float>(), store_.flat_params().data<float>() + u.unit->offset,
                     static_cast<size_t>(u.chunk), DType::f32);
  }
}

}  // namespace ds
