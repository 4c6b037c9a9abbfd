// The optimizer-state store (see the header): the interface's bookkeeping, the resident store, and ranged access
// for callers that think in partition elements rather than tiles.
#include "ds/zero/optimizer_state.h"

#include <algorithm>
#include <cstring>

#include "ds/core/error.h"

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

void OptimizerStateStore::check_tile(int64_t t, StateMask which) const {
  DS_ASSERT(t >= 0 && t < tile_count(), "tile {} of a store of {} tiles", t, tile_count());
  DS_ASSERT((which & ~kinds()) == 0, "state kinds {:#x} requested from a store holding {:#x}", which, kinds());
}

ResidentStateStore::ResidentStateStore(int64_t numel, int64_t tile_numel, bool has_master)
    : OptimizerStateStore(numel, tile_numel, has_master) {
  for (int k = 0; k < kStateKinds; ++k) {
    if (kinds() & (1u << k)) state_[k] = Tensor::zeros({numel}, DType::f32, Category::optimizer);
  }
}

StateTile ResidentStateStore::acquire(int64_t t, StateMask which, TileAccess access) {
  check_tile(t, which);
  StateTile tile;
  tile.index = t;
  tile.begin = tile_begin(t);
  tile.count = tile_size(t);
  tile.which = which;
  tile.access = access;
  for (int k = 0; k < kStateKinds; ++k) {
    if (which & (1u << k)) tile.state[k] = state_[k].narrow(tile.begin, tile.count);
  }
  return tile;
}

std::unique_ptr<OptimizerStateStore> make_resident_state_store(int64_t numel, int64_t tile_numel, bool has_master) {
  return std::make_unique<ResidentStateStore>(numel, tile_numel, has_master);
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
