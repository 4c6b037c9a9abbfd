// Where this rank keeps the parameters, in the precision's parameter dtype: the store's flat buffer, holding all of
// them (stages 0-2), or a partition of its own holding only the chunks it owns (stage 3, `param` memory; the full
// parameters then never exist on a rank and arrive through set()). Readers and writers address it by flat offset
// or by unit; after the step updated the owned chunks, all_gather_owned() brings every rank's full copy up to date
// (stages 1-2), in place, one all-gather per unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"
#include "ds/nn/parameter.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/swapped_params.h"

namespace ds::zero {

class ParamStorage {
 public:
  // holds_all: the store's flat parameter buffer (materialized in `dtype`); otherwise a partition is allocated in
  // `tier` (the host tier with offload_param device 'cpu'), or swapped to NVMe when `swap` is given
  // (offload_param device 'nvme', swapped_params.h).
  ParamStorage(nn::ParameterStore& store, const PartitionLayout& layout, DType dtype, bool holds_all,
               Tier tier = Tier::device, const ParamSwapOptions* swap = nullptr);
  ~ParamStorage();

  DType dtype() const { return dtype_; }
  bool holds_all() const { return holds_all_; }
  // This rank's chunk of unit i as a [chunk] view; `write` when the caller changes it. A swapped partition reads
  // the chunk in and keeps it until every copy of the view is gone (writing it back after `write`), so hold the
  // view, not a pointer into it, for as long as the bytes are used.
  Tensor owned_chunk(size_t unit, bool write = false) const;
  // Starts reading unit i's chunk ahead (a swapped partition; nothing otherwise), and how far ahead that helps.
  void prefetch(size_t unit) const;
  int prefetch_depth() const;
  bool swapped() const { return swapped_ != nullptr; }
  // A swapped partition's transfers (zeros otherwise), and a wait for its write-backs.
  OptimizerStateStore::SwapStats swap_stats() const;
  void sync() const;
  // All of unit i (holds_all only).
  std::byte* full(size_t unit) const;
  // Flat element `flat` (holds_all only).
  std::byte* at_flat(int64_t flat) const;
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
  Tensor own_;  // !holds_all and not swapped: the owned partition
  std::unique_ptr<SwappedPartition> swapped_;
};

}  // namespace ds::zero
