// ZeRO stages 0-2: reductions, owned-chunk Adam, all-gather. See the header for the layout.
// Gradients are summed over ranks by the collectives and divided by N in the step (and the norm), so a run at N
// ranks with micro-batch B follows the single-process run with micro-batch N*B up to rounding.
#include "ds/runtime/zero/zero_optimizer.h"

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
  DS_ASSERT(store.flat_params().storage()->category() == full_params_category(stage_));
  DS_ASSERT(keeps_full_gradients(stage_) == store.flat_grads().defined(),
            "stage {} needs a store materialized {} gradients", stage_, keeps_full_gradients(stage_) ? "with" : "without");
  for (const ParamUnit& u : store.units()) {
    DS_ASSERT(u.padded_numel % world_ == 0, "unit {} of {} elements is not aligned to {} ranks", u.name,
              u.padded_numel, world_);
    const int64_t chunk = stage_ == 0 ? u.padded_numel : u.padded_numel / world_;
    units_.push_back({&u, chunk, partition_numel_});
    partition_numel_ += chunk;
    max_chunk_ = std::max(max_chunk_, chunk);
  }
  m_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  v_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  if (stage_ >= 1) {
    recv_ = Tensor::zeros({2 * max_chunk_}, DType::f32, Category::comm_buffer);
    gather_send_ = Tensor::zeros({max_chunk_}, DType::f32, Category::comm_buffer);
  }
  if (stage_ == 3) {
    own_params_ = Tensor::empty({partition_numel_}, DType::f32, Category::param);
    for (const UnitState& u : units_)
      std::memcpy(own_params_.data<float>() + u.part_offset,
                  store_.flat_params().data<float>() + u.unit->offset + rank_ * u.chunk,
                  static_cast<size_t>(u.chunk) * sizeof(float));
    store_.release_flat_params();
    gathered_.resize(units_.size());
    pool_.resize(units_.size());
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
    // The first unit (the embeddings, whose tied weight also serves the head) keeps its own bucket for the whole
    // backward; the other units share two buckets, used alternately.
    root_bucket_ = Tensor::zeros({units_.front().unit->padded_numel}, DType::f32, Category::comm_buffer);
    for (size_t i = 1; i < units_.size(); ++i) bucket_numel_ = std::max(bucket_numel_, units_[i].unit->padded_numel);
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
Tensor ZeroOptimizer::take_buffer(size_t index) {
  if (!pool_[index].empty()) {
    Tensor buf = pool_[index].back();
    pool_[index].pop_back();
    return buf;
  }
  return Tensor::empty({units_[index].unit->padded_numel}, DType::f32, Category::comm_buffer);
}

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
  pool_[index].push_back(gathered_[index]);
  gathered_[index] = Tensor();
  live_numel_ -= units_[index].unit->padded_numel;
}

void ZeroOptimizer::pre_forward(Module& m) {
  if (stage_ == 3) fetch(static_cast<size_t>(&state_of(m) - units_.data()));
}

void ZeroOptimizer::post_forward(Module& m) {
  if (stage_ == 3) release(static_cast<size_t>(&state_of(m) - units_.data()), false);
}

void ZeroOptimizer::pre_backward(Module& m) {
  if (stage_ < 2) return;
  const UnitState& u = state_of(m);
  const size_t index = static_cast<size_t>(&u - units_.data());
  if (stage_ == 3) fetch(index);
  const int64_t n = u.unit->padded_numel;
  Tensor bucket;
  if (index == 0) {
    bucket = root_bucket_.slice_flat(0, {n});
    unit_bucket_[index] = 2;
  } else {
    const int b = free_bucket();
    bucket_busy_[b] = true;
    bucket = buckets_.slice_flat(b * bucket_numel_, {n});
    unit_bucket_[index] = b;
  }
  bucket.zero_();
  for (Parameter* p : u.unit->params) p->grad = bucket.slice_flat(p->offset - u.unit->offset, p->shape);
}

void ZeroOptimizer::post_backward(Module& m) {
  if (stage_ < 2) {
    if (!overlap_ || !last_micro_) return;
    // The unit's full gradients are final: reduce them now, while backward continues with the next unit.
    const UnitState& u = state_of(m);
    const size_t index = static_cast<size_t>(&u - units_.data());
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
  const UnitState& u = state_of(m);
  const size_t index = static_cast<size_t>(&u - units_.data());
  const int b = unit_bucket_[index];
  const float* bucket = b == 2 ? root_bucket_.data<float>() : buckets_.data<float>() + b * bucket_numel_;
  // Receive slot b & 1: bucket 0 and 1 have their own; the root bucket (2) reuses slot 0 once all else is done.
  if (b == 2) drain(0);
  WorkPtr w = comm_.reduce_scatter_async(bucket, recv_.data<float>() + (b & 1) * max_chunk_,
                                         static_cast<size_t>(u.chunk), DType::f32, ReduceOp::sum);
  pending_.push_back({index, w, b, Finish::accumulate});
  drain(overlap_ ? 1 : 0);
  if (stage_ == 3) release(index, false);
}

std::vector<float> ZeroOptimizer::full_parameters() {
  drain(0);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(store_.numel()));
  for (size_t i = 0; i < units_.size(); ++i) {
    const bool was_gathered = stage_ != 3 || gathered_[i].defined();
    if (!was_gathered) gather(i);
    for (const Parameter* p : units_[i].unit->params)
      out.insert(out.end(), p->data.data<float>(), p->data.data<float>() + p->numel());
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
