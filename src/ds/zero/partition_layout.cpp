// The partition layout (see the header): one pass over the units at construction.
#include "ds/zero/partition_layout.h"

#include "ds/core/error.h"
#include "ds/nn/module.h"

namespace ds::zero {

PartitionLayout::PartitionLayout(const std::vector<nn::ParamUnit>& units, int rank, int world, bool replicated)
    : rank_(rank), world_(world), replicated_(replicated) {
  DS_ASSERT(world >= 1 && rank >= 0 && rank < world, "rank {} of a world of {}", rank, world);
  int64_t expected_offset = units.empty() ? 0 : units.front().offset;
  for (const nn::ParamUnit& u : units) {
    DS_ASSERT(u.padded_numel % world == 0, "unit {} of {} elements is not aligned to {} ranks", u.name,
              u.padded_numel, world);
    DS_ASSERT(u.offset == expected_offset, "unit {} starts at {}, after a unit that ends at {}", u.name, u.offset,
              expected_offset);
    expected_offset = u.offset + u.padded_numel;
    UnitLayout l;
    l.unit = &u;
    l.offset = u.offset;
    l.padded = u.padded_numel;
    l.chunk = replicated ? u.padded_numel : u.padded_numel / world;
    l.own = replicated ? u.offset : u.offset + rank * l.chunk;
    l.part_offset = partition_numel_;
    partition_numel_ += l.chunk;
    padded_numel_ += l.padded;
    max_chunk_ = std::max(max_chunk_, l.chunk);
    largest_unit_ = std::max(largest_unit_, l.padded);
    if (u.owner) by_owner_.emplace(u.owner, units_.size());
    units_.push_back(l);
  }
}

size_t PartitionLayout::index_of(const nn::Module& owner) const {
  auto it = by_owner_.find(&owner);
  DS_ASSERT(it != by_owner_.end(), "module {} is not a gather unit of this model", owner.name());
  return it->second;
}

}  // namespace ds::zero
