// The NVMe optimizer-state store (see the header).
//
// Note [Swap pipeline]
// The optimizer walks the tiles in order: prefetch(t+1), acquire(t), step, release(t). With pipeline_read the
// prefetch starts reading tile t+1 into a free buffer slot at once, so the read runs while tile t is stepped. A
// released tile stays dirty in its slot until another tile is released (or its slot is needed, or sync()): then its
// write-back starts, so callers that write one tile in many small pieces (loading a checkpoint, initialising the
// master weights parameter by parameter) write it once, not once per piece. With pipeline_write the write-back
// runs while the next tiles are stepped; without it (DeepSpeed's default) it is waited for where it is issued. A slot is reused only
// after its transfers finished, least recently used first, so a tile read back soon after it was written (the
// checkpoint after a step, the first tiles of the next step with slots to spare) comes from the buffer and is
// never read over data still being written. The buffer slots: buffer_count buffers of one kind each, grouped into
// tile-sized slots, and at least one slot per pipeline stage (1 + pipeline_read + pipeline_write).
// Tile t's kinds are segments [(t*K + j)*S, (t*K + j + 1)*S) of the file (K kinds held, S = the tile's bytes
// rounded up to 4 KiB), so a whole tile is one contiguous transfer. The file is preallocated (zeros), which are the
// moments' initial values. After an I/O error the file's contents are unknown: every later call throws.
#include "ds/zero/swapped_state.h"

#include <algorithm>

#include "ds/core/error.h"
#include "ds/core/log.h"

namespace ds::zero {

namespace {

// f(first segment, segment count) for each run of consecutive set bits of `segments`.
template <typename F>
void for_runs(uint32_t segments, F&& f) {
  for (int j = 0; j < 32;) {
    if (!(segments >> j & 1u)) {
      ++j;
      continue;
    }
    int end = j;
    while (end < 32 && (segments >> end & 1u)) ++end;
    f(j, end - j);
    j = end;
  }
}

}  // namespace

SwappedStateStore::SwappedStateStore(int64_t numel, int64_t tile_numel, bool has_master, const SwapOptions& options)
    : OptimizerStateStore(numel, tile_numel, has_master),
      options_(options),
      kinds_held_(has_master ? 3 : 2),
      segment_bytes_(offload::io_aligned(this->tile_numel() * static_cast<int64_t>(sizeof(float)))) {
  DS_CHECK_AS(ConfigError, options.buffer_count >= 1,
              "[offload] offload_optimizer.buffer_count is {}; it must be at least 1", options.buffer_count);
  file_ = std::make_unique<offload::SwapFile>(options.dir, options.file_name,
                                              std::max<int64_t>(tile_count(), 1) * kinds_held_ * segment_bytes_,
                                              Category::optimizer);
  aio_ = std::make_unique<offload::AioEngine>(options.aio);
  const int64_t stages = 1 + (options.pipeline_read ? 1 : 0) + (options.pipeline_write ? 1 : 0);
  const int64_t slots = std::max(stages, (options.buffer_count + kinds_held_ - 1) / kinds_held_);
  slots_.resize(static_cast<size_t>(std::min(slots, std::max<int64_t>(tile_count(), 1))));
  for (Slot& s : slots_) {
    s.buffer = offload::io_buffer(kinds_held_ * segment_bytes_, Category::comm_buffer, options.pin_memory);
  }
}

SwappedStateStore::~SwappedStateStore() {
  for (Slot& s : slots_) {
    for (auto* list : {&s.reads, &s.writes}) {
      for (const offload::IoTicket& t : *list) {
        try {
          offload::AioEngine::wait(t);
        } catch (const std::exception& e) {
          if (failure_.empty()) log_warning("{}", e.what());
          failure_ = e.what();
        }
      }
    }
  }
}

int SwappedStateStore::segment(StateKind k) const {
  // Held kinds in StateKind order: master (when held), exp_avg, exp_avg_sq.
  const int i = static_cast<int>(k);
  return has_master() ? i : i - 1;
}

void SwappedStateStore::check_healthy() const {
  DS_CHECK_AS(IoError, failure_.empty(),
              "[offload] the optimizer state in '{}' is unusable after an earlier I/O error ({}); the run cannot go "
              "on: resume from the last checkpoint", file_->path(), failure_);
}

void SwappedStateStore::wait(std::vector<offload::IoTicket>& tickets) {
  for (const offload::IoTicket& t : tickets) {
    try {
      stall_seconds_ += offload::AioEngine::wait(t);
    } catch (const IoError& e) {
      failure_ = e.what();
      tickets.clear();
      throw IoError(fmt::format("{}; the optimizer state in '{}' is lost from this point on: resume from the last "
                                "checkpoint", e.what(), file_->path()));
    }
  }
  tickets.clear();
}

void SwappedStateStore::wait_reads(Slot& s) {
  wait(s.reads);
  s.valid |= s.reading;
  s.reading = 0;
}

void SwappedStateStore::wait_writes(Slot& s) { wait(s.writes); }

SwappedStateStore::Slot* SwappedStateStore::find(int64_t t) {
  for (Slot& s : slots_) {
    if (s.tile == t) return &s;
  }
  return nullptr;
}

SwappedStateStore::Slot& SwappedStateStore::take_slot(int64_t t, Slot* victim) {
  if (!victim) {
    for (Slot& s : slots_) {
      if (!s.in_use && (!victim || s.last_used < victim->last_used)) victim = &s;
    }
  }
  DS_ASSERT(victim != nullptr, "no free swap buffer: {} slots, all in use", slots_.size());
  wait_reads(*victim);
  if (victim->dirty) write_back(*victim);
  wait_writes(*victim);
  victim->tile = t;
  victim->valid = 0;
  victim->prefetched = false;
  victim->last_used = ++clock_;
  return *victim;
}

void SwappedStateStore::start_reads(Slot& s, StateMask which) {
  uint32_t segments = 0;
  for (int k = 0; k < kStateKinds; ++k) {
    const StateMask bit = static_cast<StateMask>(1u << k);
    if ((which & bit) && !((s.valid | s.reading) & bit)) segments |= 1u << segment(static_cast<StateKind>(k));
  }
  if (segments == 0) return;
  // A read must not land on bytes still being written out of the same buffer.
  wait_writes(s);
  std::byte* base = static_cast<std::byte*>(s.buffer.raw());
  for_runs(segments, [&](int first, int count) {
    s.reads.push_back(aio_->read(*file_, offset(s.tile, first), base + first * segment_bytes_,
                                 count * segment_bytes_));
  });
  for (int k = 0; k < kStateKinds; ++k) {
    if ((kinds() >> k & 1u) && (segments >> segment(static_cast<StateKind>(k)) & 1u)) s.reading |= 1u << k;
  }
}

void SwappedStateStore::prefetch(int64_t t, StateMask which) {
  check_healthy();
  if (!options_.pipeline_read) return;
  check_tile(t, which);
  Slot* s = find(t);
  if (s && s->in_use) return;
  if (!s) {
    // Never into the slot of a tile read ahead and not yet acquired.
    Slot* victim = nullptr;
    for (Slot& c : slots_) {
      if (!c.in_use && !c.prefetched && (!victim || c.last_used < victim->last_used)) victim = &c;
    }
    if (!victim) return;
    s = &take_slot(t, victim);
  }
  start_reads(*s, which);
  s->prefetched = true;
}

StateTile SwappedStateStore::acquire(int64_t t, StateMask which, TileAccess access) {
  check_healthy();
  check_tile(t, which);
  Slot* found = find(t);
  Slot& s = found ? *found : take_slot(t);
  DS_ASSERT(!s.in_use, "tile {} acquired twice", t);
  if (s.prefetched) ++prefetch_hits_;
  s.prefetched = false;
  if (access == TileAccess::write) {
    // Every element of `which` is overwritten: nothing to read, but no read or write of the buffer may be running.
    wait_reads(s);
    wait_writes(s);
    s.valid |= which;
  } else {
    start_reads(s, which);
    wait_reads(s);
    if (access == TileAccess::read_write) wait_writes(s);
  }
  s.in_use = true;
  s.last_used = ++clock_;
  StateTile tile = tile_header(t, which, access);
  for (int k = 0; k < kStateKinds; ++k) {
    if (which & (1u << k)) {
      tile.state[k] = Tensor::from_storage(s.buffer.storage(), segment(static_cast<StateKind>(k)) * segment_bytes_,
                                           {tile.count}, DType::f32);
    }
  }
  return tile;
}

void SwappedStateStore::release(const StateTile& tile) {
  Slot* s = find(tile.index);
  DS_ASSERT(s && s->in_use, "tile {} released without being acquired", tile.index);
  s->in_use = false;
  if (tile.access == TileAccess::read) return;
  s->dirty |= tile.which;
  for (Slot& other : slots_) {  // Note [Swap pipeline]: the tiles released before this one go out now
    if (&other != s && !other.in_use && other.dirty) write_back(other);
  }
}

void SwappedStateStore::write_back(Slot& s) {
  uint32_t segments = 0;
  for (int k = 0; k < kStateKinds; ++k) {
    if (s.dirty & (1u << k)) segments |= 1u << segment(static_cast<StateKind>(k));
  }
  s.dirty = 0;
  std::byte* base = static_cast<std::byte*>(s.buffer.raw());
  for_runs(segments, [&](int first, int count) {
    s.writes.push_back(aio_->write(*file_, offset(s.tile, first), base + first * segment_bytes_,
                                   count * segment_bytes_));
  });
  if (!options_.pipeline_write) wait_writes(s);
}

void SwappedStateStore::sync() {
  check_healthy();
  for (Slot& s : slots_) {
    wait_reads(s);
    if (s.dirty && !s.in_use) write_back(s);
    wait_writes(s);
  }
}

OptimizerStateStore::SwapStats SwappedStateStore::swap_stats() const {
  return SwapStats::of(*aio_, stall_seconds_, prefetch_hits_);
}

}  // namespace ds::zero
