// The stage-3 parameter partition on NVMe (offload_param device 'nvme'; DeepSpeed's partitioned parameter swapper,
// brief §3.3). Each unit's owned chunk has an aligned place in one preallocated swap file per rank; a pool of
// offload_param.buffer_count host buffers of buffer_size elements holds the chunks in use, least recently used
// first out. A chunk is handed out as a tensor view that pins its buffer: the buffer is not reused while any copy of
// the view lives, and a chunk taken for writing is written back (without waiting) once another changed chunk has
// been let go, or its buffer is needed. The
// coordinator reads chunks ahead along the stage-3 trace (prefetch), so the disk works while earlier units compute.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ds/offload/aio.h"
#include "ds/zero/optimizer_state.h"
#include "ds/zero/partition_layout.h"

namespace ds::zero {

struct ParamSwapOptions {
  std::string dir;        // offload_param.nvme_path
  std::string file_name;  // the rank's swap file in it
  int64_t buffer_count = 5;
  int64_t buffer_size = 100000000;  // elements per buffer: at least the largest owned chunk
  int64_t max_in_cpu = 1000000000;  // elements the buffers may hold in all (fewer buffers when it is smaller)
  bool pin_memory = false;
  offload::AioOptions aio;
};

// The options offload_param asks for: set for device 'nvme' at stage 3, empty otherwise; rank names the file.
std::optional<ParamSwapOptions> param_swap_options(const config::ZeroConfig& zero, const config::AioConfig& aio,
                                                   int rank);

class SwappedPartition {
 public:
  // IoError naming the path when the file cannot be made; ConfigError when a chunk does not fit a buffer or the
  // buffers are too few.
  SwappedPartition(const PartitionLayout& layout, DType dtype, const ParamSwapOptions& options);
  ~SwappedPartition();
  SwappedPartition(const SwappedPartition&) = delete;
  SwappedPartition& operator=(const SwappedPartition&) = delete;

  // Unit i's owned chunk ([chunk] in the storage dtype), read in unless a buffer holds it; pinned while any copy of
  // the view lives; with `write`, written back after the last one is gone (see unpin()).
  Tensor chunk(size_t unit, bool write);
  // Starts reading unit i's chunk into a buffer that is free without waiting, if there is one.
  void prefetch(size_t unit);
  // How many chunks ahead a caller may usefully prefetch (the buffers not needed for the chunks in use).
  int prefetch_depth() const { return static_cast<int>(slots_.size()) - 2; }
  // Waits for every write-back; IoError if one failed.
  void sync();
  OptimizerStateStore::SwapStats stats() const;

 private:
  struct Slot {
    int64_t unit = -1;
    bool valid = false;      // the buffer holds the unit's current chunk (or will, once `read` completes)
    bool prefetched = false;  // read ahead, not taken since
    bool dirty = false;      // changed, not yet written back
    int pins = 0;
    offload::IoTicket read, write;
    uint64_t last_used = 0;
    Tensor buffer;
  };
  struct Pin;

  Slot* find(size_t unit);
  Slot* victim(bool skip_prefetched);
  void load(Slot& s, size_t unit);  // s emptied (its transfers waited for), then reading `unit`
  void wait(offload::IoTicket& t);
  void unpin(size_t slot, bool write);
  void write_back(Slot& s);  // starts writing the slot's chunk (after its previous write-back)
  void check_healthy() const;

  const PartitionLayout& layout_;
  DType dtype_;
  std::vector<int64_t> offset_;  // per unit: the chunk's byte offset in the file
  std::unique_ptr<offload::SwapFile> file_;
  std::unique_ptr<offload::AioEngine> aio_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  double stall_seconds_ = 0;
  int64_t prefetch_hits_ = 0;
  std::string failure_;
};

}  // namespace ds::zero
