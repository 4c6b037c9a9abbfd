// The optimizer-state store (see the header): the interface's bookkeeping, the resident store, and ranged access
// for callers that think in partition elements rather than tiles.
#include "ds/zero/optimizer_state.h"

#include <algorithm>
#include <cstring>

#include <unistd.h>

#include "ds/core/error.h"
#include "ds/zero/swapped_state.h"

#include <fmt/format.h>

namespace ds::zero {

const char* state_name(StateKind k) {
  switch (k) {
    case StateKind::master: return "master";
    case StateKind::exp_avg: return "exp_avg";
    case StateKind::exp_avg_sq: return "exp_avg_sq";
  }
  return "?";
}

OptimizerStateStore::OptimizerStateStore(int64_t numel, int64_t tile_numel, bool has_master)
    : numel_(numel), tile_numel_(std::max<int64_t>(1, std::min(tile_numel, std::max<int64_t>(numel, 1)))),
      has_master_(has_master) {
  DS_ASSERT(numel >= 0, "a state store of {} elements", numel);
}

StateMask OptimizerStateStore::kinds() const {
  return has_master_ ? static_cast<StateMask>(kMoments | mask_of(StateKind::master)) : kMoments;
}

StateTile OptimizerStateStore::tile_header(int64_t t, StateMask which, TileAccess access) const {
  StateTile tile;
  tile.index = t;
  tile.begin = tile_begin(t);
  tile.count = tile_size(t);
  tile.which = which;
  tile.access = access;
  return tile;
}

OptimizerStateStore::SwapStats OptimizerStateStore::SwapStats::of(const offload::AioEngine& aio, double stall_seconds,
                                                                  int64_t prefetch_hits) {
  return {aio.bytes_read(), aio.bytes_written(), aio.busy_seconds(), stall_seconds, prefetch_hits};
}

void OptimizerStateStore::check_tile(int64_t t, StateMask which) const {
  DS_ASSERT(t >= 0 && t < tile_count(), "tile {} of a store of {} tiles", t, tile_count());
  DS_ASSERT((which & ~kinds()) == 0, "state kinds {:#x} requested from a store holding {:#x}", which, kinds());
}

ResidentStateStore::ResidentStateStore(int64_t numel, int64_t tile_numel, bool has_master, Tier tier)
    : OptimizerStateStore(numel, tile_numel, has_master) {
  for (int k = 0; k < kStateKinds; ++k) {
    if (kinds() & (1u << k)) state_[k] = Tensor::zeros({numel}, DType::f32, Category::optimizer, tier);
  }
}

StateTile ResidentStateStore::acquire(int64_t t, StateMask which, TileAccess access) {
  check_tile(t, which);
  StateTile tile = tile_header(t, which, access);
  for (int k = 0; k < kStateKinds; ++k) {
    if (which & (1u << k)) tile.state[k] = state_[k].narrow(tile.begin, tile.count);
  }
  return tile;
}

std::unique_ptr<OptimizerStateStore> make_resident_state_store(int64_t numel, int64_t tile_numel, bool has_master) {
  return std::make_unique<ResidentStateStore>(numel, tile_numel, has_master);
}

offload::AioOptions aio_options(const config::AioConfig& aio) {
  offload::AioOptions o;
  o.block_size = aio.block_size;
  o.queue_depth = static_cast<int>(std::min<int64_t>(aio.queue_depth, 1 << 16));
  o.intra_op_parallelism = static_cast<int>(std::min<int64_t>(aio.intra_op_parallelism, 1 << 16));
  o.single_submit = aio.single_submit;
  o.overlap_events = aio.overlap_events;
  return o;
}

StateStoreFactory state_store_factory(const config::ZeroConfig& zero, const config::AioConfig& aio, int rank,
                                      const std::string& what) {
  if (!zero.offload_optimizer_active()) return make_resident_state_store;
  const config::OffloadOptimizerConfig& o = *zero.offload_optimizer;
  if (o.device == config::OffloadDevice::cpu) {
    return [](int64_t numel, int64_t tile_numel, bool has_master) -> std::unique_ptr<OptimizerStateStore> {
      return std::make_unique<ResidentStateStore>(numel, tile_numel, has_master, Tier::host);
    };
  }
  SwapOptions s;
  s.dir = o.nvme_path;
  s.file_name = fmt::format("ds_{}_rank{}_pid{}.swp", what, rank, ::getpid());
  s.buffer_count = o.buffer_count;
  s.pin_memory = o.pin_memory;
  s.pipeline_read = o.pipeline_read;
  s.pipeline_write = o.pipeline_write;
  s.aio = aio_options(aio);
  return [s](int64_t numel, int64_t tile_numel, bool has_master) -> std::unique_ptr<OptimizerStateStore> {
    return std::make_unique<SwappedStateStore>(numel, tile_numel, has_master, s);
  };
}

namespace {

// f(tile, offset in tile, offset in the range, count) for each tile piece of [begin, begin + n).
template <typename F>
void for_tiles(OptimizerStateStore& store, StateKind kind, int64_t begin, int64_t n, TileAccess access, F&& f) {
  DS_ASSERT(begin >= 0 && n >= 0 && begin + n <= store.numel(), "state range [{}, {}) of {}", begin, begin + n,
            store.numel());
  for (int64_t at = begin; at < begin + n;) {
    const int64_t t = at / store.tile_numel();
    const int64_t len = std::min(begin + n, store.tile_begin(t) + store.tile_size(t)) - at;
    const bool whole = len == store.tile_size(t);
    const StateTile tile =
        store.acquire(t, mask_of(kind), access == TileAccess::write && !whole ? TileAccess::read_write : access);
    f(tile.data(kind) + (at - tile.begin), at - begin, len);
    store.release(tile);
    at += len;
  }
}

}  // namespace

void read_state(OptimizerStateStore& store, StateKind kind, int64_t begin, int64_t n, float* out) {
  for_tiles(store, kind, begin, n, TileAccess::read, [&](float* state, int64_t at, int64_t len) {
    std::memcpy(out + at, state, static_cast<size_t>(len) * sizeof(float));
  });
}

void write_state(OptimizerStateStore& store, StateKind kind, int64_t begin, int64_t n, const float* in) {
  for_tiles(store, kind, begin, n, TileAccess::write, [&](float* state, int64_t at, int64_t len) {
    std::memcpy(state, in + at, static_cast<size_t>(len) * sizeof(float));
  });
}

}  // namespace ds::zero
