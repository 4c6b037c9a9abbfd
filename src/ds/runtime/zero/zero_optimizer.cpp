// ZeRO stages 0-3: reductions, owned-chunk Adam, all-gather, stage-3 gathering. See the header for the layout.
// Gradients are summed over ranks by the collectives and divided by N in the step (and the norm), so a run at N
// ranks with micro-batch B follows the single-process run with micro-batch N*B up to rounding.
//
// Note [Mixed precision]
// With fp16 or bf16 the store holds 16-bit parameters (stages 0-2: all of them; stage 3: the owned chunks) and
// gradients in the accumulation dtype; the model never sees either. Every unit is therefore fetched like a stage-3
// unit: before its forward and backward its 16-bit parameters (all-gathered first at stage 3) are widened into a
// pooled fp32 buffer the model computes with, released after use. Its gradients land in an fp32 bucket, are
// rounded to the accumulation dtype when the unit's backward ends, and are added to the full gradients (stages
// 0-1) or reduce-scattered in that dtype into the owned partition (stages 2-3). The step widens each owned
// gradient chunk to fp32, updates the fp32 master chunk with Adam and rounds it back into the 16-bit parameters,
// which stages 1-2 then all-gather in 16 bits. A loss-scaled gradient that overflows shows as an inf or NaN norm,
// and the engine skips the step. Activations stay in fp32: on the CPU the kernels compute in fp32 from 16-bit
// weights, so the rounding of weights and gradients is mixed precision's, the arithmetic is not.
#include "ds/runtime/zero/zero_optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ds/core/log.h"

namespace ds {

namespace {

constexpr size_t kTile = 4096;

// dst (dtype) += src (fp32), rounded once to dtype.
void add_f32_into(void* dst, DType dtype, const float* src, size_t n) {
  if (dtype == DType::f32) {
    cpu::add_inplace(static_cast<float*>(dst), src, n);
    return;
  }
  float acc[kTile];
  auto* d = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; i += kTile) {
    const size_t len = std::min(kTile, n - i);
    cpu::to_f32(acc, d + i, dtype, len);
    cpu::add_inplace(acc, src + i, len);
    cpu::from_f32(d + i, acc, dtype, len);
  }
}

// dst += src, both in dtype.
void add_same(void* dst, const void* src, DType dtype, size_t n) {
  if (dtype == DType::f32) {
    cpu::add_inplace(static_cast<float*>(dst), static_cast<const float*>(src), n);
    return;
  }
  float x[kTile];
  for (size_t i = 0; i < n; i += kTile) {
    const size_t len = std::min(kTile, n - i);
    cpu::to_f32(x, static_cast<const uint16_t*>(src) + i, dtype, len);
    add_f32_into(static_cast<uint16_t*>(dst) + i, dtype, x, len);
  }
}

double sum_squares_of(const void* src, DType dtype, size_t n) {
  if (dtype == DType::f32) return cpu::sum_squares(static_cast<const float*>(src), n);
  float x[kTile];
  double total = 0;
  for (size_t i = 0; i < n; i += kTile) {
    const size_t len = std::min(kTile, n - i);
    cpu::to_f32(x, static_cast<const uint16_t*>(src) + i, dtype, len);
    total += cpu::sum_squares(x, len);
  }
  return total;
}

}  // namespace

ZeroOptimizer::ZeroOptimizer(ParameterStore& store, Communicator& comm, const ZeroConfig& zero,
                             const cpu::AdamParams& hyper, const ZeroPrecision& precision)
    : store_(store),
      comm_(comm),
      stage_(zero.stage),
      overlap_(zero.overlap_comm),
      precision_(precision),
      resident_(!precision.mixed() && zero.stage < 3),
      buckets_on_(zero.stage >= 2 || precision.mixed()),
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
  DS_ASSERT(!store.flat_params().defined() || store.flat_params().dtype() == precision_.params);
  DS_ASSERT(!store.flat_grads().defined() || store.flat_grads().dtype() == precision_.grads);
  DS_ASSERT(precision_.mixed() || precision_.grads == DType::f32, "fp32 parameters need fp32 gradients");
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
  const DType pd = precision_.params, gd = precision_.grads;
  m_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  v_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
  if (precision_.mixed()) {
    master_ = Tensor::zeros({partition_numel_}, DType::f32, Category::optimizer);
    step_grads_ = Tensor::zeros({max_chunk_}, DType::f32, Category::comm_buffer);
  }
  if (stage_ >= 1) recv_ = Tensor::zeros({2 * max_chunk_}, gd, Category::comm_buffer);
  if (stage_ == 1 || stage_ == 2) gather_send_ = Tensor::zeros({max_chunk_}, pd, Category::comm_buffer);
  if (stage_ == 3) own_params_ = Tensor::zeros({partition_numel_}, pd, Category::param);
  if (!resident_) {
    gathered_.resize(units_.size());
    large_numel_ = largest;
    inflight_buf_.resize(units_.size());
    inflight_.resize(units_.size());
    const bool gathers = stage_ == 3;  // prefetch, reuse and persistence are stage-3 knobs
    prefetch_limit_ = gathers ? zero.stage3_prefetch_bucket_size : 0;
    max_live_ = gathers ? zero.stage3_max_live_parameters : 0;
    max_reuse_ = gathers ? zero.stage3_max_reuse_distance : 0;
    for (const UnitState& u : units_)
      persistent_.push_back(gathers && u.unit->numel <= zero.stage3_param_persistence_threshold);
  }
  if (stage_ >= 2) part_grads_ = Tensor::zeros({partition_numel_}, gd, Category::grad);
  if (buckets_on_) {
    bucket_numel_ = largest;
    buckets_ = Tensor::zeros({std::max<int64_t>(2 * bucket_numel_, 1)}, DType::f32, Category::comm_buffer);
    if (stage_ >= 2 && gd != DType::f32) bucket_out_ = Tensor::zeros({2 * bucket_numel_}, gd, Category::comm_buffer);
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

std::byte* ZeroOptimizer::owned_params(const UnitState& u) const {
  const size_t es = dtype_size(precision_.params);
  if (stage_ == 3) return static_cast<std::byte*>(own_params_.raw()) + u.part_offset * es;
  const int64_t start = u.unit->offset + (stage_ == 0 ? 0 : rank_ * u.chunk);
  return static_cast<std::byte*>(store_.flat_params().raw()) + start * es;
}

std::byte* ZeroOptimizer::owned_grads(const UnitState& u) {
  const size_t es = dtype_size(precision_.grads);
  if (stage_ >= 2) return static_cast<std::byte*>(part_grads_.raw()) + u.part_offset * es;
  return flat_grads_at(u.unit->offset + (stage_ == 0 ? 0 : rank_ * u.chunk));
}

std::byte* ZeroOptimizer::flat_grads_at(int64_t offset) {
  return static_cast<std::byte*>(store_.flat_grads().raw()) + offset * dtype_size(precision_.grads);
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
  // Gathered copies (persistent units, or anything an evaluation left) would go stale: release them.
  for (size_t i = 0; i < gathered_.size(); ++i) {
    if (inflight_[i]) gather(i);
    release(i, true);
  }
  const DType pd = precision_.params;
  if (which == State::param && stage_ < 3) {  // every rank holds all parameters
    cpu::from_f32(static_cast<std::byte*>(store_.flat_params().raw()) + flat_offset * dtype_size(pd), values, pd,
           static_cast<size_t>(n));
    if (!precision_.mixed()) return;
  }
  for_owned(flat_offset, flat_offset + n, [&](int64_t flat, int64_t part, int64_t count) {
    const float* src = values + (flat - flat_offset);
    const auto len = static_cast<size_t>(count);
    if (which == State::exp_avg) {
      std::memcpy(m_.data<float>() + part, src, len * sizeof(float));
    } else if (which == State::exp_avg_sq) {
      std::memcpy(v_.data<float>() + part, src, len * sizeof(float));
    } else {
      if (precision_.mixed()) std::memcpy(master_.data<float>() + part, src, len * sizeof(float));
      if (stage_ == 3) cpu::from_f32(static_cast<std::byte*>(own_params_.raw()) + part * dtype_size(pd), src, pd, len);
    }
  });
}

void ZeroOptimizer::copy_owned_params(float* out) const {
  if (precision_.mixed()) {  // the master weights are the parameters
    std::memcpy(out, master_.data<float>(), static_cast<size_t>(partition_numel_) * sizeof(float));
    return;
  }
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
  const DType gd = precision_.grads;
  const size_t es = dtype_size(gd);
  std::byte* unit_grads = flat_grads_at(u.unit->offset);
  comm_.reduce_scatter(unit_grads, recv_.raw(), static_cast<size_t>(u.chunk), gd);
  std::memcpy(unit_grads + rank_ * u.chunk * es, recv_.raw(), static_cast<size_t>(u.chunk) * es);
}

// Stages 0-1 with overlap_comm, on the last micro-batch: a unit's full gradients are final when its backward
// ends, so they are reduced right away on the communicator's thread while backward goes on. Slices of a sliced
// parameter are the exception: the embedding adds to their gradients at the very end (reduce_deferred()).
void ZeroOptimizer::issue_full_grad_reduction(size_t index) {
  const UnitState& u = units_[index];
  const DType gd = precision_.grads;
  std::byte* unit_grads = flat_grads_at(u.unit->offset);
  if (stage_ == 0) {
    pending_.push_back({index, comm_.all_reduce_async(unit_grads, static_cast<size_t>(u.unit->padded_numel), gd,
                                                      ReduceOp::sum),
                        -1, Finish::none});
  } else {
    drain(1);  // two receive slots: at most one other reduction may still be in flight
    const int slot = next_slot_;
    next_slot_ ^= 1;
    pending_.push_back({index,
                        comm_.reduce_scatter_async(unit_grads,
                                                   static_cast<std::byte*>(recv_.raw()) +
                                                       slot * max_chunk_ * dtype_size(gd),
                                                   static_cast<size_t>(u.chunk), gd, ReduceOp::sum),
                        slot, Finish::copy_owned});
  }
}

void ZeroOptimizer::reduce_deferred() {
  for (size_t index : deferred_) issue_full_grad_reduction(index);
  deferred_.clear();
}

void ZeroOptimizer::end_micro_batch(bool last) {
  if (stage_ >= 2) {
    drain(0);
    return;
  }
  if (!last) return;
  if (overlap_) {  // the other units' reductions were issued by post_backward
    reduce_deferred();
    drain(0);
    return;
  }
  if (stage_ == 0) {
    comm_.all_reduce(store_.flat_grads().raw(), static_cast<size_t>(store_.padded_numel()), precision_.grads);
  } else {
    for (const UnitState& u : units_) reduce_unit_full_grads(u);
  }
}

int ZeroOptimizer::free_bucket() {
  for (;;) {
    for (int b = 0; b < 2; ++b)
      if (!bucket_busy_[b]) return b;
    DS_ASSERT(!pending_.empty(), "both gradient buckets are bound with no reduction in flight");
    drain(pending_.size() - 1);  // wait for the oldest reduction, which frees its bucket
  }
}

void ZeroOptimizer::drain(size_t keep_in_flight) {
  const DType gd = precision_.grads;
  const size_t es = dtype_size(gd);
  while (pending_.size() > keep_in_flight) {
    Pending p = pending_.front();
    pending_.pop_front();
    p.work->wait();
    const UnitState& u = units_[p.unit];
    const std::byte* recv =
        recv_.defined() ? static_cast<const std::byte*>(recv_.raw()) + (p.bucket & 1) * max_chunk_ * es : nullptr;
    if (p.finish == Finish::accumulate) {
      add_same(owned_grads(u), recv, gd, static_cast<size_t>(u.chunk));
      if (p.bucket >= 0 && p.bucket < 2) bucket_busy_[p.bucket] = false;
    } else if (p.finish == Finish::copy_owned) {
      std::memcpy(owned_grads(u), recv, static_cast<size_t>(u.chunk) * es);
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
// the largest size, so blocks and wte slices of slightly different sizes share buffers. In mixed precision the
// all-gather fills a 16-bit buffer from the same pool, widened into the fp32 one when the unit is used.
Tensor ZeroOptimizer::take_buffer(size_t index, DType dtype) {
  const int64_t n = units_[index].unit->padded_numel;
  const int64_t size = 4 * n >= large_numel_ ? large_numel_ : n;
  for (size_t i = 0; i < free_buffers_.size(); ++i) {
    if (free_buffers_[i].numel() != size || free_buffers_[i].dtype() != dtype) continue;
    Tensor buf = free_buffers_[i];
    free_buffers_.erase(free_buffers_.begin() + static_cast<std::ptrdiff_t>(i));
    return buf;
  }
  return Tensor::empty({size}, dtype, Category::comm_buffer);
}

void ZeroOptimizer::return_buffer(Tensor buf) { free_buffers_.push_back(std::move(buf)); }

void ZeroOptimizer::gather(size_t index) {
  if (gathered_[index].defined()) return;
  const UnitState& u = units_[index];
  const DType pd = precision_.params;
  const auto n = static_cast<size_t>(u.unit->padded_numel);
  Tensor full;  // the unit's parameters in the params dtype
  if (inflight_[index]) {
    inflight_[index]->wait();
    inflight_[index].reset();
    full = inflight_buf_[index];
    inflight_buf_[index] = Tensor();
    ++prefetch_hits_;
  } else if (stage_ == 3) {
    full = take_buffer(index, pd);
    comm_.all_gather(owned_params(u), full.raw(), static_cast<size_t>(u.chunk), pd);
    live_numel_ += u.unit->padded_numel;
  } else {
    live_numel_ += u.unit->padded_numel;
  }
  Tensor buf = full;
  if (precision_.mixed()) {
    buf = take_buffer(index, DType::f32);
    const void* src = full.defined() ? full.raw()  // stages 0-2: the resident 16-bit copy
                                     : static_cast<const std::byte*>(store_.flat_params().raw()) +
                                           u.unit->offset * dtype_size(pd);
    cpu::to_f32(buf.data<float>(), src, pd, n);
    if (full.defined()) return_buffer(full);
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
    inflight_buf_[k] = take_buffer(k, precision_.params);
    inflight_[k] = comm_.all_gather_async(owned_params(units_[k]), inflight_buf_[k].raw(),
                                          static_cast<size_t>(units_[k].chunk), precision_.params);
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

void ZeroOptimizer::pre_forward(const Module& m) {
  if (!resident_) fetch(index_of(m));
}

void ZeroOptimizer::post_forward(const Module& m) {
  if (!resident_) release(index_of(m), false);
}

void ZeroOptimizer::pre_backward(const Module& m) {
  if (!buckets_on_) return;
  const size_t index = index_of(m);
  const UnitState& u = units_[index];
  if (!resident_) fetch(index);
  const int b = free_bucket();
  bucket_busy_[b] = true;
  unit_bucket_[index] = b;
  Tensor bucket = buckets_.slice_flat(b * bucket_numel_, {u.unit->padded_numel});
  bucket.zero_();
  for (Parameter* p : u.unit->params) p->grad = bucket.slice_flat(p->offset - u.unit->offset, p->shape);
}

void ZeroOptimizer::post_backward(const Module& m) {
  const size_t index = index_of(m);
  const UnitState& u = units_[index];
  const DType gd = precision_.grads;
  if (stage_ < 2) {
    if (buckets_on_) {  // mixed precision: the unit's fp32 bucket is added to its full gradients, rounded once
      const int b = unit_bucket_[index];
      for (Parameter* p : u.unit->params) p->grad = Tensor();
      add_f32_into(flat_grads_at(u.unit->offset), gd, buckets_.data<float>() + b * bucket_numel_,
                   static_cast<size_t>(u.unit->padded_numel));
      bucket_busy_[b] = false;
      unit_bucket_[index] = -1;
      release(index, false);
    }
    if (!overlap_ || !last_micro_) return;
    if (u.unit->sliced) {
      deferred_.push_back(index);
    } else {
      issue_full_grad_reduction(index);
    }
    return;
  }
  const int b = unit_bucket_[index];
  for (Parameter* p : u.unit->params) p->grad = Tensor();
  // Bucket b reduces into receive slot b; the bucket is busy until drain() has accumulated the slot.
  const void* send = buckets_.data<float>() + b * bucket_numel_;
  if (gd != DType::f32) {
    std::byte* out = static_cast<std::byte*>(bucket_out_.raw()) + b * bucket_numel_ * dtype_size(gd);
    cpu::from_f32(out, buckets_.data<float>() + b * bucket_numel_, gd, static_cast<size_t>(u.unit->padded_numel));
    send = out;
  }
  WorkPtr w = comm_.reduce_scatter_async(send, static_cast<std::byte*>(recv_.raw()) + b * max_chunk_ * dtype_size(gd),
                                         static_cast<size_t>(u.chunk), gd, ReduceOp::sum);
  pending_.push_back({index, w, b, Finish::accumulate});
  unit_bucket_[index] = -1;
  drain(overlap_ ? 1 : 0);
  if (!resident_) release(index, false);
}

const float* ZeroOptimizer::slice_data(const Module& slice) {
  const size_t index = index_of(slice);
  if (resident_) return store_.flat_params().data<float>() + units_[index].unit->offset;
  DS_ASSERT(gathered_[index].defined(), "{} is used while not gathered", slice.name());
  return gathered_[index].data<float>();
}

float* ZeroOptimizer::slice_grads(const Module& slice) {
  const size_t index = index_of(slice);
  if (!buckets_on_) return store_.flat_grads().data<float>() + units_[index].unit->offset;
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

// Stage 3: each rank fills the elements it owns of every requested row, zeros elsewhere; a reduce-scatter then
// hands each rank the sum for its own rows, which is the row itself (x + 0 = x exactly). Stages 0-2 hold every
// row: a plain lookup (widened from 16 bits in mixed precision).
void ZeroOptimizer::lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) {
  const int64_t C = p.shape[1];
  const DType pd = precision_.params;
  const size_t es = dtype_size(pd);
  if (stage_ < 3) {
    const auto* flat = static_cast<const std::byte*>(store_.flat_params().raw());
    for (int64_t i = 0; i < n; ++i)
      cpu::to_f32(out + i * C, flat + (p.offset + int64_t(ids[i]) * C) * es, pd, static_cast<size_t>(C));
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
      cpu::to_f32(contrib + j * C + (flat - begin), static_cast<const std::byte*>(own_params_.raw()) + part * es, pd,
                  static_cast<size_t>(count));
    });
  }
  comm_.reduce_scatter(contrib, out, static_cast<size_t>(n * C), DType::f32);
}

namespace {

// Calls f(id, sum) once per distinct id with the fp32 sum of its rows, taken in row order, so that a gradient
// stored in 16 bits is rounded once per row of the parameter, not once per occurrence of the token.
template <typename F>
void for_each_row_sum(const int32_t* ids, const float* rows, int64_t n, int64_t C, F&& f) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  std::vector<float> sum(static_cast<size_t>(C));
  for (size_t k = 0; k < order.size();) {
    const int32_t id = ids[order[k]];
    std::copy(rows + order[k] * C, rows + (order[k] + 1) * C, sum.begin());
    for (++k; k < order.size() && ids[order[k]] == id; ++k)
      cpu::add_inplace(sum.data(), rows + order[k] * C, static_cast<size_t>(C));
    f(id, sum.data());
  }
}

}  // namespace

// Stages 2-3: every rank receives all ranks' rows and adds those elements it owns to its gradient partition; the
// rows of one token are summed first, in rank order then position order, so the result does not depend on timing.
// Stages 0-1 (mixed precision): the rows are added to this rank's full gradients, which the end of the micro-batch
// reduces.
void ZeroOptimizer::accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) {
  DS_ASSERT(buckets_on_, "row gradients go through the hooks only where gradients are not resident");
  const int64_t C = p.shape[1];
  const DType gd = precision_.grads;
  const size_t es = dtype_size(gd);
  if (stage_ < 2) {
    for_each_row_sum(ids, rows, n, C, [&](int32_t id, const float* sum) {
      add_f32_into(flat_grads_at(p.offset + int64_t(id) * C), gd, sum, static_cast<size_t>(C));
    });
    return;
  }
  drain(0);
  const int32_t* all = gather_ids(ids, n);
  if (row_data_.numel() < world_ * n * C)
    row_data_ = Tensor::empty({world_ * n * C}, DType::f32, Category::comm_buffer);
  float* all_rows = row_data_.data<float>();
  comm_.all_gather(rows, all_rows, static_cast<size_t>(n * C), DType::f32);
  for_each_row_sum(all, all_rows, world_ * n, C, [&](int32_t id, const float* sum) {
    const int64_t begin = p.offset + int64_t(id) * C;
    for_owned(begin, begin + C, [&](int64_t flat, int64_t part, int64_t count) {
      add_f32_into(static_cast<std::byte*>(part_grads_.raw()) + part * es, gd, sum + (flat - begin),
                   static_cast<size_t>(count));
    });
  });
}

std::vector<float> ZeroOptimizer::full_parameters() {
  drain(0);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(store_.numel()));
  std::vector<float> unit;
  for (size_t i = 0; i < units_.size(); ++i) {
    const UnitState& us = units_[i];
    const ParamUnit& u = *us.unit;
    // A unit's elements before its padding are its parameters (or rows) in declaration order.
    if (precision_.mixed()) {  // the fp32 master weights, gathered from their partitions
      unit.resize(static_cast<size_t>(u.padded_numel));
      const float* own = master_.data<float>() + us.part_offset;
      if (stage_ == 0) {
        std::copy(own, own + us.chunk, unit.begin());
      } else {
        comm_.all_gather(own, unit.data(), static_cast<size_t>(us.chunk), DType::f32);
      }
      out.insert(out.end(), unit.begin(), unit.begin() + u.numel);
      continue;
    }
    const bool was_gathered = resident_ || gathered_[i].defined();
    if (!was_gathered) gather(i);
    const float* data = resident_ ? store_.flat_params().data<float>() + u.offset : gathered_[i].data<float>();
    out.insert(out.end(), data, data + u.numel);
    if (!was_gathered) release(i, true);
  }
  return out;
}

double ZeroOptimizer::grad_norm() {
  drain(0);
  const DType gd = precision_.grads;
  double local = 0;
  if (stage_ == 0) {
    local = sum_squares_of(store_.flat_grads().raw(), gd, static_cast<size_t>(store_.padded_numel()));
    return std::sqrt(local) / world_;
  }
  for (const UnitState& u : units_) local += sum_squares_of(owned_grads(u), gd, static_cast<size_t>(u.chunk));
  float total = static_cast<float>(local);
  comm_.all_reduce(&total, 1, DType::f32);
  return std::sqrt(static_cast<double>(total)) / world_;
}

void ZeroOptimizer::skip_step() {
  drain(0);
  if (!resident_) {
    in_step_ = false;
    for (size_t i = 0; i < units_.size(); ++i) {
      if (inflight_[i]) gather(i);
      release(i, true);
    }
  }
}

void ZeroOptimizer::step(float lr, float grad_scale) {
  drain(0);
  ++step_;
  cpu::AdamParams p = hyper_;
  p.lr = lr;
  p.step = step_;
  const float scale = grad_scale / static_cast<float>(world_);
  const DType pd = precision_.params, gd = precision_.grads;
  for (const UnitState& u : units_) {
    const auto n = static_cast<size_t>(u.chunk);
    float* m = m_.data<float>() + u.part_offset;
    float* v = v_.data<float>() + u.part_offset;
    if (!precision_.mixed()) {
      cpu::adamw_step(reinterpret_cast<float*>(owned_params(u)), reinterpret_cast<float*>(owned_grads(u)), m, v, n, p,
                      scale);
      continue;
    }
    float* master = master_.data<float>() + u.part_offset;
    cpu::to_f32(step_grads_.data<float>(), owned_grads(u), gd, n);
    cpu::adamw_step(master, step_grads_.data<float>(), m, v, n, p, scale);
    cpu::from_f32(owned_params(u), master, pd, n);
  }
  if (!resident_) {
    // Gathered copies are now stale. Nothing is in flight: prefetch only runs ahead within the step's trace,
    // whose units have all been used.
    in_step_ = false;
    for (size_t i = 0; i < units_.size(); ++i) {
      if (inflight_[i]) gather(i);
      release(i, true);
    }
  }
  if (stage_ == 0 || stage_ == 3) return;
  const size_t es = dtype_size(pd);
  for (const UnitState& u : units_) {
    std::memcpy(gather_send_.raw(), owned_params(u), static_cast<size_t>(u.chunk) * es);
    comm_.all_gather(gather_send_.raw(), static_cast<std::byte*>(store_.flat_params().raw()) + u.unit->offset * es,
                     static_cast<size_t>(u.chunk), pd);
  }
}

}  // namespace ds
