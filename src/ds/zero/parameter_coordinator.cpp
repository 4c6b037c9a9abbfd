// The parameter coordinator (see the header).
//
// Note [Stage-3 trace]
// During the first training step the units are fetched in some order (embeddings, blocks, ln_f, then the head
// and the blocks in reverse); that order is the trace. From the next step on, each fetch walks the trace ahead and
// starts all-gathers for upcoming units on the communicator's thread while the current unit computes, as long as
// the elements in flight stay within stage3_prefetch_bucket_size and everything gathered or in flight within
// stage3_max_live_parameters. A unit about to be released stays gathered if the trace uses it again within
// stage3_max_reuse_distance elements of other units. A fetch that differs from the trace drops it (recorded again
// next step). Evaluation passes between steps fetch plainly, outside the trace. Units of at most
// stage3_param_persistence_threshold elements stay gathered until the parameters change.
// Gather buffers are pooled: a released unit's buffer goes back to the pool and the next gather takes it, so the
// pool holds as many buffers as units were ever gathered or in flight at once (which stage3_max_live_parameters
// and the reuse distance bound). Every unit of at least a quarter of the largest unit's size gets a buffer of
// the largest size, so blocks and wte slices of slightly different sizes share buffers. In mixed precision the
// all-gather fills a 16-bit buffer from the same pool, widened into the fp32 one when the unit is used.
#include "ds/zero/parameter_coordinator.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/zero/quantized_comm.h"

namespace ds::zero {

ParameterCoordinator::Options ParameterCoordinator::options_for(const config::ZeroConfig& zero, bool gathers,
                                                               comm::Communicator* hpz) {
  Options o;
  o.gathers = gathers;
  if (gathers) {  // prefetch, reuse and persistence are stage-3 knobs, and so is ZeRO++
    o.prefetch_bucket = zero.stage3_prefetch_bucket_size;
    o.max_live = zero.stage3_max_live_parameters;
    o.max_reuse = zero.stage3_max_reuse_distance;
    o.persistence = zero.stage3_param_persistence_threshold;
    o.quantized = zero.zero_quantized_weights;
    o.hpz = hpz;
  }
  return o;
}

ParameterCoordinator::ParameterCoordinator(const PartitionLayout& layout, ParamStorage& storage,
                                           comm::Communicator& comm, RowExchange& rows, const Options& options)
    : layout_(layout),
      storage_(storage),
      comm_(comm),
      rows_(rows),
      options_(options),
      gathered_(layout.size()),
      inflight_buf_(layout.size()),
      inflight_(layout.size()),
      inflight_src_(layout.size()),
      secondary_(layout.size()),
      secondary_valid_(layout.size(), false) {
  DS_ASSERT(options.gathers != storage.holds_all(), "gathering needs partitioned parameters, widening whole ones");
  DS_ASSERT(options.gathers || storage.dtype() != DType::f32, "fp32 parameters held whole need no coordinator");
  for (const UnitLayout& u : layout.units()) persistent_.push_back(u.unit->numel <= options.persistence);
}

ParameterCoordinator::~ParameterCoordinator() {
  for (comm::WorkPtr& w : inflight_) {
    if (!w) continue;
    try {
      w->wait();  // the buffer it fills is ours
    } catch (...) {
    }
  }
}

Tensor ParameterCoordinator::take_buffer(size_t unit, DType dtype) {
  const int64_t n = layout_[unit].padded, large = layout_.largest_unit();
  const int64_t size = 4 * n >= large ? large : n;
  for (size_t i = 0; i < free_buffers_.size(); ++i) {
    if (free_buffers_[i].numel() != size || free_buffers_[i].dtype() != dtype) continue;
    Tensor buf = free_buffers_[i];
    free_buffers_.erase(free_buffers_.begin() + static_cast<std::ptrdiff_t>(i));
    return buf;
  }
  return Tensor::empty({size}, dtype, Category::comm_buffer);
}

void ParameterCoordinator::gather(size_t unit) {
  if (gathered_[unit].defined()) return;
  const UnitLayout& u = layout_[unit];
  const DType pd = storage_.dtype();
  Tensor full;  // the unit's parameters in the storage dtype, when gathered
  if (inflight_[unit]) {
    inflight_[unit]->wait();
    inflight_[unit].reset();
    inflight_src_[unit] = Tensor();
    full = inflight_buf_[unit];
    inflight_buf_[unit] = Tensor();
    ++prefetch_hits_;
  } else if (options_.gathers) {
    full = take_buffer(unit, pd);
    const Tensor own = storage_.owned_chunk(unit);  // held while the all-gather reads it
    start_gather(unit, own, full)->wait();
    live_numel_ += u.padded;
  } else {
    live_numel_ += u.padded;
  }
  if (full.defined()) keep_secondary(unit, full);
  Tensor buf = full;
  if (pd != DType::f32) {  // widened for the model (Note [Mixed precision] in optimizer_step.cpp)
    buf = take_buffer(unit, DType::f32);
    const void* src = full.defined() ? full.raw() : storage_.full(unit);
    to_f32(buf.data<float>(), src, pd, static_cast<size_t>(u.padded));
    if (full.defined()) return_buffer(full);
  }
  for (nn::Parameter* p : u.unit->params) p->data = buf.slice_flat(p->offset - u.offset, p->shape);
  gathered_[unit] = buf;
}

void ParameterCoordinator::prefetch() {
  // A swapped partition reads the chunks of the next units from disk first, further ahead than the all-gathers.
  for (size_t pos = trace_pos_, ahead = 0; pos < trace_.size() && int(ahead) < storage_.prefetch_depth(); ++pos) {
    if (gathered_[trace_[pos]].defined() || inflight_[trace_[pos]]) continue;
    storage_.prefetch(trace_[pos]);
    ++ahead;
  }
  int64_t in_flight = 0;
  int pinned = 0;  // a swapped partition pins a buffer per all-gather in flight: leave one for the unit in use
  const int pin_limit = storage_.swapped() ? std::max(1, storage_.prefetch_depth()) : INT_MAX;
  for (size_t i = 0; i < layout_.size(); ++i) {
    if (!inflight_[i]) continue;
    in_flight += layout_[i].padded;
    ++pinned;
  }
  for (size_t pos = trace_pos_; pos < trace_.size(); ++pos) {
    const size_t k = trace_[pos];
    if (gathered_[k].defined() || inflight_[k]) continue;
    const int64_t n = layout_[k].padded;
    if (in_flight + n > options_.prefetch_bucket || live_numel_ + n > options_.max_live || pinned >= pin_limit) break;
    ++pinned;
    inflight_buf_[k] = take_buffer(k, storage_.dtype());
    inflight_src_[k] = storage_.owned_chunk(k);  // held until the all-gather is waited for
    inflight_[k] = start_gather(k, inflight_src_[k], inflight_buf_[k]);
    in_flight += n;
    live_numel_ += n;
    ++prefetches_issued_;
  }
}

comm::WorkPtr ParameterCoordinator::start_gather(size_t unit, const Tensor& own, const Tensor& full) {
  const UnitLayout& u = layout_[unit];
  const DType pd = storage_.dtype();
  if (options_.hpz && secondary_valid_[unit]) {
    const int64_t share = u.padded / options_.hpz->size();
    return options_.hpz->all_gather_async(secondary_[unit].raw(), full.raw(), static_cast<size_t>(share), pd);
  }
  if (options_.quantized) return quantized_all_gather_async(comm_, own.raw(), full.raw(), static_cast<size_t>(u.chunk),
                                                            pd, kQuantizedWeights);
  return comm_.all_gather_async(own.raw(), full.raw(), static_cast<size_t>(u.chunk), pd);
}

void ParameterCoordinator::keep_secondary(size_t unit, const Tensor& full) {
  if (!options_.hpz || secondary_valid_[unit]) return;
  const int64_t share = layout_[unit].padded / options_.hpz->size();
  if (!secondary_[unit].defined())
    secondary_[unit] = Tensor::empty({share}, storage_.dtype(), Category::param);
  secondary_[unit].copy_from(full.slice_flat(share * options_.hpz->rank(), {share}));
  secondary_valid_[unit] = true;
}

void ParameterCoordinator::begin_step() {
  if (!options_.gathers) return;
  if (recording_ && !trace_.empty()) trace_complete_ = true;  // the previous step recorded a whole trace
  recording_ = !trace_complete_;
  if (recording_) trace_.clear();
  trace_pos_ = 0;
  in_step_ = true;
}

void ParameterCoordinator::end_step() {
  // Nothing is in flight that the step did not use: prefetch only runs ahead within the step's trace.
  in_step_ = false;
  release_all();
}

void ParameterCoordinator::fetch(size_t unit) {
  if (in_step_) {
    if (recording_) {
      trace_.push_back(unit);
    } else if (trace_complete_) {
      if (trace_pos_ < trace_.size() && trace_[trace_pos_] == unit) {
        ++trace_pos_;
      } else {
        log_debug("[zero] stage-3 trace invalidated at fetch {}: expected unit {}, got {}", trace_pos_,
                  trace_pos_ < trace_.size() ? layout_[trace_[trace_pos_]].unit->name : std::string("(end)"),
                  layout_[unit].unit->name);
        trace_complete_ = false;
      }
    }
  }
  gather(unit);
  if (in_step_ && trace_complete_) prefetch();
}

void ParameterCoordinator::release(size_t unit, bool even_persistent) {
  if (!gathered_[unit].defined() || (persistent_[unit] && !even_persistent)) return;
  if (!even_persistent && in_step_ && trace_complete_) {
    int64_t distance = 0;
    for (size_t pos = trace_pos_; pos < trace_.size() && distance <= options_.max_reuse; ++pos) {
      if (trace_[pos] == unit) return;  // used again soon: keep it
      distance += layout_[trace_[pos]].padded;
    }
  }
  for (nn::Parameter* p : layout_[unit].unit->params) p->data = Tensor();
  return_buffer(gathered_[unit]);
  gathered_[unit] = Tensor();
  live_numel_ -= layout_[unit].padded;
}

void ParameterCoordinator::release_all() {
  for (size_t i = 0; i < layout_.size(); ++i) {
    if (inflight_[i]) gather(i);
    release(i, true);
  }
  secondary_valid_.assign(layout_.size(), false);  // the parameters are about to change
}

const float* ParameterCoordinator::data(size_t unit) const {
  DS_ASSERT(gathered_[unit].defined(), "{} is used while not gathered", layout_[unit].unit->name);
  return gathered_[unit].data<float>();
}

void ParameterCoordinator::copy_unit(size_t unit, float* out, int64_t n) {
  const bool was_gathered = gathered_[unit].defined();
  if (!was_gathered) gather(unit);
  std::memcpy(out, gathered_[unit].data<float>(), static_cast<size_t>(n) * sizeof(float));
  if (!was_gathered) release(unit, true);
}

// Partitioned: each rank fills the elements it owns of every requested row, zeros elsewhere; a reduce-scatter then
// hands each rank the sum for its own rows, which is the row itself (x + 0 = x exactly). Held whole: a plain
// lookup, widened from 16 bits.
void ParameterCoordinator::lookup_rows(const nn::Parameter& p, const int32_t* ids, int64_t n, float* out) {
  const int64_t C = p.shape[1];
  const DType pd = storage_.dtype();
  const int world = layout_.world();
  if (!options_.gathers) {
    for (int64_t i = 0; i < n; ++i)
      to_f32(out + i * C, storage_.at_flat(p.offset + int64_t(ids[i]) * C), pd, static_cast<size_t>(C));
    return;
  }
  const int32_t* all = rows_.gather_ids(ids, n);
  float* contrib = rows_.rows(world * n * C);
  std::memset(contrib, 0, static_cast<size_t>(world * n * C) * sizeof(float));
  for (int64_t j = 0; j < world * n; ++j) {
    const int64_t begin = p.offset + int64_t(all[j]) * C;
    layout_.for_owned(begin, begin + C, [&](int64_t flat, int64_t part, int64_t count) {
      storage_.read_owned(part, count, contrib + j * C + (flat - begin));
    });
  }
  comm_.reduce_scatter(contrib, out, static_cast<size_t>(n * C), DType::f32);
}

}  // namespace ds::zero
