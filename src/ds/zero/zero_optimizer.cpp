// The ZeRO facade (see the header): the stage picks and configures the parts once, here; every method below
// delegates, with no stage test of its own.
#include "ds/zero/zero_optimizer.h"

#include <algorithm>
#include <cstring>

#include "ds/core/error.h"

namespace ds::zero {

int ZeroOptimizer::checked_stage(int stage) {
  DS_CHECK_AS(ConfigError, stage >= 0 && stage <= 3, "[zero] zero_optimization.stage must be 0, 1, 2 or 3, found {}",
              stage);
  return stage;
}

ZeroOptimizer::ZeroOptimizer(nn::ParameterStore& store, comm::Communicator& comm, const config::ZeroConfig& zero,
                             const cpu::AdamParams& hyper, const ZeroPrecision& precision,
                             const zero::StateStoreFactory& make_state,
                             const std::optional<zero::ParamSwapOptions>& param_swap)
    : store_(store),
      comm_(comm),
      stage_(checked_stage(zero.stage)),
      precision_(precision),
      layout_(store.units(), comm.rank(), comm.size(), /*replicated=*/stage_ == 0),
      params_(store, layout_, precision.params, keeps_full_parameters(stage_),
              zero.offload_param_active() ? Tier::host : Tier::device, param_swap ? &*param_swap : nullptr),
      state_((make_state ? make_state : zero::make_resident_state_store)(layout_.partition_numel(),
                                                                         zero.sub_group_size, precision.mixed())),
      step_(layout_, *state_, hyper, precision),
      rows_(comm) {
  DS_ASSERT(store.materialized());
  DS_ASSERT(keeps_full_parameters(stage_) == store.flat_params().defined(),
            "stage {} needs a store materialized {} parameters", stage_,
            keeps_full_parameters(stage_) ? "with" : "without");
  DS_ASSERT(keeps_full_gradients(stage_) == store.flat_grads().defined(),
            "stage {} needs a store materialized {} gradients", stage_,
            keeps_full_gradients(stage_) ? "with" : "without");
  DS_ASSERT(!store.flat_grads().defined() || store.flat_grads().dtype() == precision_.grads);
  // ZeRO++ (stage 3): hpZ's groups are zero_hpz_partition_size consecutive ranks, as DeepSpeed's (one node each).
  const int64_t hpz = zero.zero_hpz_partition_size;
  if (stage_ == 3 && hpz > 1) {
    DS_CHECK_AS(ConfigError, comm.size() % hpz == 0, "[zero] zero_hpz_partition_size {} must divide the "
                "data-parallel size {} (it is the number of ranks per node); choose a divisor of {}", hpz, comm.size(),
                comm.size());
    hpz_ = comm.split(static_cast<int>(comm.rank() / hpz), comm.rank());
  }
  // fp32 parameters held whole are the model's own (the store binds them); anything else is fetched per unit.
  if (precision.mixed() || !keeps_full_parameters(stage_)) {
    const bool gathers = !keeps_full_parameters(stage_);
    coordinator_ = std::make_unique<zero::ParameterCoordinator>(
        layout_, params_, comm, rows_, zero::ParameterCoordinator::options_for(zero, gathers, hpz_.get()));
  }
  zero::GradientReducer::Options reduce;
  reduce.grads = precision.grads;
  reduce.lands = !keeps_full_gradients(stage_) || precision.mixed();
  reduce.overlap = zero.overlap_comm;
  reduce.bucket_numel = zero.reduce_bucket_size;
  reduce.partition_tier = zero.offload_optimizer_active() ? Tier::host : Tier::device;
  reduce.quantized = stage_ == 3 && zero.zero_quantized_gradients;  // ZeRO++ qgZ
  reducer_ = keeps_full_gradients(stage_) ? zero::make_full_gradient_reducer(layout_, store, comm, rows_, reduce)
                                          : zero::make_partitioned_gradient_reducer(layout_, comm, rows_, reduce);
}

ZeroOptimizer::~ZeroOptimizer() = default;

void ZeroOptimizer::set_state(State which, int64_t flat_offset, const float* values, int64_t n) {
  DS_ASSERT(flat_offset >= 0 && n >= 0 && flat_offset + n <= store_.padded_numel());
  // Gathered copies (persistent units, or anything an evaluation left) would go stale: release them.
  if (coordinator_) coordinator_->release_all();
  if (which == State::param) params_.set(flat_offset, values, n);
  if (which == State::param && !precision_.mixed()) return;
  const zero::StateKind kind = which == State::exp_avg      ? zero::StateKind::exp_avg
                               : which == State::exp_avg_sq ? zero::StateKind::exp_avg_sq
                                                            : zero::StateKind::master;
  layout_.for_owned(flat_offset, flat_offset + n, [&](int64_t flat, int64_t part, int64_t count) {
    zero::write_state(*state_, kind, part, count, values + (flat - flat_offset));
  });
}

void ZeroOptimizer::read_owned_params(int64_t begin, int64_t n, float* out) {
  if (precision_.mixed()) {  // the master weights are the parameters
    step_.read_master(begin, n, out);
  } else {
    params_.read_owned(begin, n, out);
  }
}

void ZeroOptimizer::set_step_count(int64_t step) {
  step_.set_step_count(step);
  if (compressed_) compressed_->restore(step);
}

void ZeroOptimizer::begin_batch() {
  if (compressed_) reducer_->set_local(!compressed_->exact(step_.step_count() + 1));
  reducer_->begin_batch();
  if (coordinator_) coordinator_->begin_step();
}

void ZeroOptimizer::skip_step() {
  reducer_->drain();
  if (coordinator_) coordinator_->end_step();
}

void ZeroOptimizer::step(float lr, float grad_scale) {
  reducer_->drain();
  const auto params = [&](size_t unit) { return params_.owned_chunk(unit, /*write=*/true); };
  const auto grads = [&](size_t unit) { return reducer_->owned_chunk(unit); };
  const int64_t number = step_.step_count() + 1;
  if (compressed_ && compressed_->steps(number)) {
    compressed_->step(number, lr, grad_scale, step_.hyper(), params, grads);
    step_.set_step_count(number);
  } else {
    step_.step(lr, grad_scale, params, grads);
  }
  if (compressed_) compressed_->after_step(number);
  if (coordinator_) coordinator_->end_step();  // gathered copies are stale now
  if (params_.holds_all() && !layout_.replicated()) params_.all_gather_owned(comm_);
}

void ZeroOptimizer::pre_forward(const nn::Module& m) {
  if (coordinator_) coordinator_->fetch(layout_.index_of(m));
}

void ZeroOptimizer::post_forward(const nn::Module& m) {
  if (coordinator_) coordinator_->release(layout_.index_of(m), false);
}

void ZeroOptimizer::pre_backward(const nn::Module& m) {
  if (!reducer_->lands()) return;  // fp32 stages 0-1: the model accumulates into the store's gradients
  const size_t unit = layout_.index_of(m);
  if (coordinator_) coordinator_->fetch(unit);
  reducer_->bind(unit);
}

void ZeroOptimizer::post_backward(const nn::Module& m) {
  const size_t unit = layout_.index_of(m);
  reducer_->commit(unit);
  if (reducer_->lands() && coordinator_) coordinator_->release(unit, false);
}

const float* ZeroOptimizer::slice_data(const nn::Module& slice) {
  const size_t unit = layout_.index_of(slice);
  if (coordinator_) return coordinator_->data(unit);
  return store_.flat_params().data<float>() + layout_[unit].offset;
}

float* ZeroOptimizer::slice_grads(const nn::Module& slice) { return reducer_->unit_grads(layout_.index_of(slice)); }

void ZeroOptimizer::lookup_rows(const nn::Parameter& p, const int32_t* ids, int64_t n, float* out) {
  DS_ASSERT(coordinator_, "row lookups go through the hooks only where parameters are not resident");
  coordinator_->lookup_rows(p, ids, n, out);
}

void ZeroOptimizer::accumulate_row_grads(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) {
  DS_ASSERT(reducer_->lands(), "row gradients go through the hooks only where gradients are not resident");
  reducer_->accumulate_rows(p, ids, rows, n);
}

std::vector<float> ZeroOptimizer::full_parameters() {
  reducer_->drain();
  std::vector<float> out;
  out.reserve(static_cast<size_t>(store_.numel()));
  std::vector<float> unit, own;
  for (size_t i = 0; i < layout_.size(); ++i) {
    const zero::UnitLayout& u = layout_[i];
    // A unit's elements before its padding are its parameters (or rows) in declaration order.
    const int64_t numel = u.unit->numel;
    unit.resize(static_cast<size_t>(u.padded));
    if (precision_.mixed()) {  // the fp32 master weights, gathered from their partitions
      own.resize(static_cast<size_t>(u.chunk));
      step_.read_master(u.part_offset, u.chunk, own.data());
      if (layout_.replicated()) {
        std::copy(own.begin(), own.end(), unit.begin());
      } else {
        comm_.all_gather(own.data(), unit.data(), static_cast<size_t>(u.chunk), DType::f32);
      }
    } else if (coordinator_) {
      coordinator_->copy_unit(i, unit.data(), numel);
    } else {
      const float* data = store_.flat_params().data<float>() + u.offset;
      std::copy(data, data + numel, unit.begin());
    }
    out.insert(out.end(), unit.begin(), unit.begin() + numel);
  }
  return out;
}

void ZeroOptimizer::use_lamb(const cpu::LambParams& hyper) {
  // DeepSpeed's ZeRO would step LAMB on each rank's flat partition: one trust ratio per rank, results that change
  // with the number of ranks. Per-parameter ratios need every parameter whole on its rank: stage 0.
  DS_CHECK_AS(ConfigError, layout_.replicated(),
              "[zero] LAMB runs at ZeRO stage 0 here, found stage {}: under ZeRO, DeepSpeed steps LAMB on each rank's "
              "flat partition, one trust ratio per rank instead of per parameter, so its result would depend on the "
              "number of ranks; use \"stage\": 0, or Adam/AdamW with ZeRO", stage_);
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (const nn::Parameter& p : store_.all()) {
    // Replicated: partition element == flat element (every unit is owned whole, in flat order).
    spans.emplace_back(p.offset, p.offset + p.numel());
  }
  for (const zero::UnitLayout& u : layout_.units())
    DS_ASSERT(u.part_offset == u.offset, "a replicated partition follows the flat layout");
  step_.use_lamb(hyper, std::move(spans));
}

void ZeroOptimizer::use_compression(const config::OptimizerConfig& options) {
  DS_CHECK_AS(ConfigError, layout_.replicated(), "[zero] 1-bit Adam and 0/1 Adam are not compatible with ZeRO (as in "
              "DeepSpeed), found stage {}: use \"stage\": 0 with them, or Adam/AdamW with ZeRO", stage_);
  std::vector<std::pair<int64_t, int64_t>> tensors;
  for (const nn::Parameter& p : store_.all())  // replicated: partition element == flat element
    tensors.emplace_back(p.offset, p.offset + p.numel());
  std::sort(tensors.begin(), tensors.end());
  compressed_ = std::make_unique<zero::CompressedAdam>(layout_, *state_, precision_, comm_, options, tensors);
  compressed_->restore(step_.step_count());
}

void ZeroOptimizer::sum_tied_gradient(const nn::Parameter& p, comm::Communicator& group) {
  if (group.size() == 1) return;
  reducer_->drain();
  for (size_t i = 0; i < layout_.size(); ++i) {
    if (layout_[i].unit->sliced != &p) continue;
    const Tensor chunk = reducer_->owned_chunk(i);
    group.all_reduce(chunk.raw(), static_cast<size_t>(chunk.numel()), chunk.dtype());
  }
}

}  // namespace ds::zero
