// Parameter storage (see the header). The all-gather after the step runs in place (each rank's chunk is already
// where the gathered unit puts it), so no staging copy is needed.
#include "ds/zero/param_storage.h"

#include "ds/core/convert.h"
#include "ds/core/error.h"

namespace ds::zero {

ParamStorage::ParamStorage(nn::ParameterStore& store, const PartitionLayout& layout, DType dtype, bool holds_all,
                           Tier tier, const ParamSwapOptions* swap)
    : store_(store), layout_(layout), dtype_(dtype), holds_all_(holds_all) {
  if (holds_all_) {
    DS_ASSERT(store.flat_params().defined() && store.flat_params().dtype() == dtype,
              "the store must hold the parameters in {}", dtype_name(dtype));
  } else if (swap) {
    swapped_ = std::make_unique<SwappedPartition>(layout, dtype, *swap);
  } else {
    own_ = Tensor::zeros({layout.partition_numel()}, dtype, Category::param, tier);
  }
}

ParamStorage::~ParamStorage() = default;

Tensor ParamStorage::owned_chunk(size_t unit, bool write) const {
  const UnitLayout& u = layout_[unit];
  if (swapped_) return swapped_->chunk(unit, write);
  if (!holds_all_) return own_.slice_flat(u.part_offset, {u.chunk});
  return store_.flat_params().slice_flat(u.own, {u.chunk});
}

void ParamStorage::prefetch(size_t unit) const {
  if (swapped_) swapped_->prefetch(unit);
}

int ParamStorage::prefetch_depth() const { return swapped_ ? swapped_->prefetch_depth() : 0; }

OptimizerStateStore::SwapStats ParamStorage::swap_stats() const {
  return swapped_ ? swapped_->stats() : OptimizerStateStore::SwapStats{};
}

void ParamStorage::sync() const {
  if (swapped_) swapped_->sync();
}

std::byte* ParamStorage::full(size_t unit) const { return at_flat(layout_[unit].offset); }

std::byte* ParamStorage::at_flat(int64_t flat) const {
  DS_ASSERT(holds_all_, "the full parameters are not kept on this rank");
  return static_cast<std::byte*>(store_.flat_params().raw()) + flat * dtype_size(dtype_);
}

void ParamStorage::set(int64_t flat_offset, const float* values, int64_t n) {
  const size_t es = dtype_size(dtype_);
  if (holds_all_) {
    from_f32(static_cast<std::byte*>(store_.flat_params().raw()) + flat_offset * es, values, dtype_,
                  static_cast<size_t>(n));
    return;
  }
  layout_.for_owned(flat_offset, flat_offset + n, [&](int64_t flat, int64_t part, int64_t count) {
    layout_.for_partition(part, part + count, [&](size_t unit, int64_t at, int64_t len) {
      const Tensor chunk = owned_chunk(unit, /*write=*/true);
      from_f32(static_cast<std::byte*>(chunk.raw()) + (at - layout_[unit].part_offset) * es,
               values + (flat - flat_offset) + (at - part), dtype_, static_cast<size_t>(len));
    });
  });
}

void ParamStorage::read_owned(int64_t begin, int64_t n, float* out) const {
  const size_t es = dtype_size(dtype_);
  layout_.for_partition(begin, begin + n, [&](size_t unit, int64_t part, int64_t count) {
    const Tensor chunk = owned_chunk(unit);
    to_f32(out + (part - begin), static_cast<const std::byte*>(chunk.raw()) + (part - layout_[unit].part_offset) * es,
           dtype_, static_cast<size_t>(count));
  });
}

void ParamStorage::all_gather_owned(comm::Communicator& comm) {
  DS_ASSERT(holds_all_ && !layout_.replicated(), "all_gather_owned needs full parameters and a partitioned layout");
  for (size_t i = 0; i < layout_.size(); ++i)
    comm.all_gather(owned_chunk(i).raw(), full(i), static_cast<size_t>(layout_[i].chunk), dtype_);
}

}  // namespace ds::zero
