// The optimizer state swapped to NVMe (ZeRO-Infinity; DESIGN decision 7; DeepSpeed's partitioned and pipelined
// optimizer swappers, brief §3.3). The state lives in one preallocated swap file per rank under nvme_path, tile
// after tile (DeepSpeed's sub-groups), each tile's kinds back to back in aligned segments; a few host buffers, each
// holding one tile's kinds, are all the memory it takes (category comm_buffer, host tier: staging, as the
// communication buckets are). Note [Swap pipeline] in the .cpp says how reads, the
// step and writes overlap.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ds/offload/aio.h"
#include "ds/zero/optimizer_state.h"

namespace ds::zero {

struct SwapOptions {
  std::string dir;        // offload_optimizer.nvme_path
  std::string file_name;  // the rank's swap file in it
  int64_t buffer_count = 4;     // offload_optimizer.buffer_count: tile-sized buffers of one kind each
  bool pin_memory = false;
  bool pipeline_read = false;   // read the next tile while this one is stepped
  bool pipeline_write = false;  // write a tile back while the next ones are stepped
  offload::AioOptions aio;
};

class SwappedStateStore final : public OptimizerStateStore {
 public:
  // IoError naming the path when the swap file cannot be made (SwapFile).
  SwappedStateStore(int64_t numel, int64_t tile_numel, bool has_master, const SwapOptions& options);
  // Waits for every transfer in flight; a failure there is logged, not thrown.
  ~SwappedStateStore() override;

  StateTile acquire(int64_t t, StateMask which, TileAccess access) override;
  void release(const StateTile& tile) override;
  void prefetch(int64_t t, StateMask which) override;
  void sync() override;
  SwapStats swap_stats() const override;

  int buffer_slots() const { return static_cast<int>(slots_.size()); }
  const std::string& path() const { return file_->path(); }

 private:
  struct Slot {
    int64_t tile = -1;
    StateMask valid = 0;    // kinds whose bytes in the buffer are the tile's current values
    StateMask reading = 0;  // kinds being read into the buffer
    std::vector<offload::IoTicket> reads, writes;
    bool in_use = false;
    bool prefetched = false;  // read ahead, not acquired since
    StateMask dirty = 0;      // kinds released after writing, not yet written back
    uint64_t last_used = 0;
    Tensor buffer;  // u8, kinds() segments of segment_bytes_
  };

  // The position of kind k among the kinds held (its segment in a tile's record).
  int segment(StateKind k) const;
  int64_t offset(int64_t t, int seg) const { return (t * kinds_held_ + seg) * segment_bytes_; }
  Slot* find(int64_t t);
  // `victim`, or else the least recently used slot not in use, emptied for tile t (its transfers waited for).
  Slot& take_slot(int64_t t, Slot* victim = nullptr);
  // Starts reading `which` of the slot's tile where not already valid or coming.
  void start_reads(Slot& s, StateMask which);
  void wait_reads(Slot& s);
  // Starts writing the slot's dirty kinds (and waits for them without pipeline_write).
  void write_back(Slot& s);
  void wait_writes(Slot& s);
  void wait(std::vector<offload::IoTicket>& tickets);
  void check_healthy() const;

  SwapOptions options_;
  int kinds_held_;
  int64_t segment_bytes_;
  std::unique_ptr<offload::SwapFile> file_;
  std::unique_ptr<offload::AioEngine> aio_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  double stall_seconds_ = 0;
  int64_t prefetch_hits_ = 0;
  std::string failure_;  // the first I/O error: the file's contents are unknown after it
};

}  // namespace ds::zero
