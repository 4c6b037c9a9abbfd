// The optimizer state of this rank's partition (the fp32 master weights in mixed precision, Adam's exp_avg and
// exp_avg_sq), reached only through OptimizerStateStore, one tile at a time. Decision: the optimizer step and the
// checkpoints never hold a raw pointer to the whole state, so a store may keep it somewhere else than memory: a
// swapped store (ZeRO-Infinity's NVMe offload, DESIGN decision 7) reads a tile in on acquire() and writes it back
// on release(), and prefetch() lets it read the next tile while the current one is stepped. Tiles are DeepSpeed's
// stage-3 sub-groups: zero_optimization.sub_group_size elements of the partition (the last one shorter), so
// sub_group_size bounds the working set of a swapped store. ResidentStateStore keeps everything in memory
// (category `optimizer`), which is what runs today.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ds/config/config.h"
#include "ds/core/tensor.h"
#include "ds/offload/aio.h"

namespace ds::zero {

enum class StateKind : uint8_t { master, exp_avg, exp_avg_sq };
constexpr int kStateKinds = 3;
const char* state_name(StateKind k);

// A set of state kinds.
using StateMask = uint8_t;
constexpr StateMask mask_of(StateKind k) { return static_cast<StateMask>(1u << static_cast<unsigned>(k)); }
constexpr StateMask kMoments = mask_of(StateKind::exp_avg) | mask_of(StateKind::exp_avg_sq);

// read: the caller only reads; write: it overwrites every element of the requested states (a swapped store need
// not read them first); read_write: it updates them.
enum class TileAccess : uint8_t { read, write, read_write };

// The requested states of partition elements [begin, begin + count); the others are null.
struct StateTile {
  int64_t index = 0;
  int64_t begin = 0, count = 0;
  StateMask which = 0;
  TileAccess access = TileAccess::read;
  Tensor state[kStateKinds];  // fp32 [count] views of the kinds acquired, wherever the store keeps them
  const Tensor& view(StateKind k) const { return state[static_cast<int>(k)]; }
  // The view's elements; null for a kind not acquired.
  float* data(StateKind k) const { return view(k).defined() ? view(k).data<float>() : nullptr; }
};

class OptimizerStateStore {
 public:
  // `numel` elements of state per kind, in tiles of `tile_numel` (>= 1); a master copy only when `has_master`.
  OptimizerStateStore(int64_t numel, int64_t tile_numel, bool has_master);
  virtual ~OptimizerStateStore() = default;
  OptimizerStateStore(const OptimizerStateStore&) = delete;
  OptimizerStateStore& operator=(const OptimizerStateStore&) = delete;

  int64_t numel() const { return numel_; }
  bool has_master() const { return has_master_; }
  int64_t tile_numel() const { return tile_numel_; }
  int64_t tile_count() const { return numel_ == 0 ? 0 : (numel_ + tile_numel_ - 1) / tile_numel_; }
  int64_t tile_begin(int64_t t) const { return t * tile_numel_; }
  int64_t tile_size(int64_t t) const { return std::min(tile_numel_, numel_ - t * tile_numel_); }
  // The kinds this store holds: the moments, and the master with has_master().
  StateMask kinds() const;

  // Makes the states `which` of tile t available, valid until release(). Callers hold one tile at a time (a
  // swapped store may size its buffers for that, plus one prefetched tile).
  virtual StateTile acquire(int64_t t, StateMask which, TileAccess access) = 0;
  // Ends an access begun by acquire(); a swapped store writes back what was written.
  virtual void release(const StateTile& tile) = 0;
  // A hint that tile t will be acquired next for `which`; a swapped store may start reading it.
  virtual void prefetch(int64_t t, StateMask which) {}
  // Waits until everything released so far is stored; a swapped store reports a failed write here at the latest.
  virtual void sync() {}
  // What a swapped store moved and waited for (zeros for a store in memory).
  struct SwapStats {
    int64_t bytes_read = 0, bytes_written = 0;
    double io_busy_seconds = 0;  // time with at least one transfer in flight
    double stall_seconds = 0;    // time the optimizer waited for a transfer: the part the pipeline did not hide
    int64_t prefetch_hits = 0;   // tiles acquired after a prefetch had started reading them
    // An I/O engine's transfers, with the waits and read-ahead hits its store counted.
    static SwapStats of(const offload::AioEngine& aio, double stall_seconds, int64_t prefetch_hits);
    // What happened between `earlier` and this.
    SwapStats since(const SwapStats& earlier) const {
      return {bytes_read - earlier.bytes_read, bytes_written - earlier.bytes_written,
              io_busy_seconds - earlier.io_busy_seconds, stall_seconds - earlier.stall_seconds,
              prefetch_hits - earlier.prefetch_hits};
    }
  };
  virtual SwapStats swap_stats() const { return {}; }

 protected:
  void check_tile(int64_t t, StateMask which) const;
  // A tile of t with the requested kinds' views still to fill.
  StateTile tile_header(int64_t t, StateMask which, TileAccess access) const;

 private:
  int64_t numel_, tile_numel_;
  bool has_master_;
};

// Everything in memory, allocated zeroed at construction (category `optimizer`) in `tier`: the device tier, or
// the host tier for offload_optimizer device 'cpu' (ZeRO-Offload: the CPU steps the state where it lives).
class ResidentStateStore final : public OptimizerStateStore {
 public:
  ResidentStateStore(int64_t numel, int64_t tile_numel, bool has_master, Tier tier = Tier::device);
  StateTile acquire(int64_t t, StateMask which, TileAccess access) override;
  void release(const StateTile&) override {}

 private:
  Tensor state_[kStateKinds];
};

// Makes the store for a partition of `numel` elements in tiles of `tile_numel`.
using StateStoreFactory =
    std::function<std::unique_ptr<OptimizerStateStore>(int64_t numel, int64_t tile_numel, bool has_master)>;
std::unique_ptr<OptimizerStateStore> make_resident_state_store(int64_t numel, int64_t tile_numel, bool has_master);
// The optimizer-state store zero_optimization.offload_optimizer asks for: resident in the device tier (no offload),
// in the host tier ('cpu'), or swapped to a file under nvme_path ('nvme', swapped_state.h); `what` and rank name
// the file (an MoE model's experts have an optimizer of their own).
StateStoreFactory state_store_factory(const config::ZeroConfig& zero, const config::AioConfig& aio, int rank,
                                      const std::string& what = "optimizer");
// The aio block as the I/O engine's options.
offload::AioOptions aio_options(const config::AioConfig& aio);

// Elements [begin, begin + n) of one kind, tile by tile through acquire/release.
void read_state(OptimizerStateStore& store, StateKind kind, int64_t begin, int64_t n, float* out);
void write_state(OptimizerStateStore& store, StateKind kind, int64_t begin, int64_t n, const float* in);

}  // namespace ds::zero
