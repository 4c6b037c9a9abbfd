// Which elements of each gather unit (ParamUnit, nn/parameter.h) this rank owns: pure arithmetic over the units'
// offsets and padded sizes, no buffers, no communication (DESIGN decision 6). Every unit is padded to a multiple
// of the data-parallel size N and split into N equal chunks; rank r owns chunk r of every unit, and its partition
// is the concatenation of its chunks in unit order (Ψ/N elements, padding included). So a unit's gradients
// reduce-scatter with one equal-count collective and its parameters all-gather with another. A replicated layout
// (ZeRO stage 0) has every rank own every unit whole.
#pragma once

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "ds/nn/parameter.h"

namespace ds::nn {
class Module;
}

namespace ds::zero {

struct UnitLayout {
  const nn::ParamUnit* unit = nullptr;
  int64_t offset = 0;       // the unit's first element in the flat buffers
  int64_t padded = 0;       // its padded_numel, a multiple of N
  int64_t chunk = 0;        // elements each rank owns: padded / N (replicated: padded)
  int64_t own = 0;          // flat offset of this rank's chunk: offset + rank * chunk (replicated: offset)
  int64_t part_offset = 0;  // where the chunk starts in this rank's partition
};

class PartitionLayout {
 public:
  // The unit alignment that keeps every chunk 64-byte aligned (16 fp32 elements per rank).
  static int64_t alignment(int world) { return int64_t(16) * world; }

  // `units` in flat order, each padded to a multiple of `world` (ParameterStore::materialize with alignment()).
  PartitionLayout(const std::vector<nn::ParamUnit>& units, int rank, int world, bool replicated);

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool replicated() const { return replicated_; }
  size_t size() const { return units_.size(); }
  const UnitLayout& operator[](size_t i) const { return units_[i]; }
  const std::vector<UnitLayout>& units() const { return units_; }
  // The unit whose owner is `owner` (an internal error if it has none).
  size_t index_of(const nn::Module& owner) const;

  int64_t partition_numel() const { return partition_numel_; }  // sum of the chunks
  int64_t padded_numel() const { return padded_numel_; }        // sum of the padded units
  int64_t max_chunk() const { return max_chunk_; }
  int64_t largest_unit() const { return largest_unit_; }

  // f(flat, part, count) for each piece of the flat range [begin, end) this rank owns, in flat order: flat
  // elements [flat, flat + count) are partition elements [part, part + count).
  template <typename F>
  void for_owned(int64_t begin, int64_t end, F&& f) const {
    auto it = std::upper_bound(units_.begin(), units_.end(), begin,
                               [](int64_t x, const UnitLayout& u) { return x < u.offset + u.padded; });
    for (; it != units_.end() && it->offset < end; ++it) {
      const int64_t lo = std::max(begin, it->own), hi = std::min(end, it->own + it->chunk);
      if (lo < hi) f(lo, it->part_offset + (lo - it->own), hi - lo);
    }
  }
  // f(unit, part, count) for each piece of the partition range [begin, end), in order: partition elements
  // [part, part + count) lie in unit `unit`'s chunk, at chunk offset part - units()[unit].part_offset.
  template <typename F>
  void for_partition(int64_t begin, int64_t end, F&& f) const {
    auto it = std::upper_bound(units_.begin(), units_.end(), begin,
                               [](int64_t x, const UnitLayout& u) { return x < u.part_offset + u.chunk; });
    for (; it != units_.end() && it->part_offset < end; ++it) {
      const int64_t lo = std::max(begin, it->part_offset), hi = std::min(end, it->part_offset + it->chunk);
      if (lo < hi) f(static_cast<size_t>(it - units_.begin()), lo, hi - lo);
    }
  }

 private:
  int rank_, world_;
  bool replicated_;
  std::vector<UnitLayout> units_;
  std::unordered_map<const nn::Module*, size_t> by_owner_;
  int64_t partition_numel_ = 0, padded_numel_ = 0, max_chunk_ = 0, largest_unit_ = 0;
};

}  // namespace ds::zero
