// Where this rank keeps the parameters, in the precision's parameter dtype: the store's flat buffer, holding all of
// them (stages 0-2), or a partition of its own holding only the chunks it owns (stage 3, `param` memory; the full
// parameters then never exist on a rank and arrive through set()). Readers and writers address it by flat offset
// or by unit; after the step updated the owned chunks, all_gather_owned() brings every rank's full copy up to date
// (stages 1-2), in place, one all-gather per unit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"
#include "ds/nn/parameter.h"
#include "ds/zero/partition_layout.h"

namespace ds::zero {

class ParamStorage {
 public:
  // holds_all: the store's flat parameter buffer (materialized in `dtype`); otherwise a partition is allocated in
  // `tier` (the host tier with offload_param device 'cpu').
  ParamStorage(nn::ParameterStore& store, const PartitionLayout& layout, DType dtype, bool holds_all,
               Tier tier = Tier::device);

  DType dtype() const { return dtype_; }
  bool holds_all() const { return holds_all_; }
  // This rank's chunk of unit i: its bytes, and a [chunk] view of them.
  std::byte* owned(size_t unit) const;
  Tensor owned_chunk(size_t unit) const;
  // All of unit i (holds_all only).
  std::byte* full(size_t unit) const;
  // Flat element `flat` (holds_all only).
  std::byte* at_flat(int64_t flat) const;
  // Partition element `part` (a partition of its own only: !holds_all).
  std::byte* at_part(int64_t part) const;
  // Sets flat elements [offset, offset + n) from fp32 values: all of them when holding all, else the owned pieces.
  void set(int64_t flat_offset, const float* values, int64_t n);
  // Partition elements [begin, begin + n) widened to fp32.
  void read_owned(int64_t begin, int64_t n, float* out) const;
  // Every unit's owned chunk all-gathered into the full buffer (holds_all, partitioned layout): a collective.
  void all_gather_owned(comm::Communicator& comm);

 private:
  nn::ParameterStore& store_;
  const PartitionLayout& layout_;
  DType dtype_;
  bool holds_all_;
  Tensor own_;  // !holds_all: the owned partition
};

}  // namespace ds::zero
