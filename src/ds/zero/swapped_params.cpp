// The NVMe parameter partition (see the header). A view handed out by chunk() shares ownership of a Pin, whose
// destructor unpins the buffer, so a buffer cannot be reused under a live view however the view is copied (the
// coordinator holds one while an all-gather reads it, the optimizer step while it writes the chunk).
#include "ds/zero/swapped_params.h"

#include <unistd.h>

#include <algorithm>

#include "ds/core/error.h"
#include "ds/core/log.h"

namespace ds::zero {

std::optional<ParamSwapOptions> param_swap_options(const config::ZeroConfig& zero, const config::AioConfig& aio,
                                                   int rank) {
  if (zero.stage != 3 || !zero.offload_param_active() || zero.offload_param->device != config::OffloadDevice::nvme)
    return std::nullopt;
  const config::OffloadParamConfig& o = *zero.offload_param;
  ParamSwapOptions s;
  s.dir = o.nvme_path;
  s.file_name = fmt::format("ds_params_rank{}_pid{}.swp", rank, ::getpid());
  s.buffer_count = o.buffer_count;
  s.buffer_size = o.buffer_size;
  s.max_in_cpu = o.max_in_cpu;
  s.pin_memory = o.pin_memory;
  s.aio = aio_options(aio);
  return s;
}

struct SwappedPartition::Pin {
  Pin(SwappedPartition* o, size_t s, bool w) : owner(o), slot(s), write(w) {}
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin() { owner->unpin(slot, write); }
  SwappedPartition* owner;
  size_t slot;
  bool write;
};

SwappedPartition::SwappedPartition(const PartitionLayout& layout, DType dtype, const ParamSwapOptions& options)
    : layout_(layout), dtype_(dtype) {
  const auto es = static_cast<int64_t>(dtype_size(dtype));
  int64_t bytes = 0;
  for (const UnitLayout& u : layout.units()) {
    offset_.push_back(bytes);
    bytes += offload::io_aligned(u.chunk * es);
  }
  DS_CHECK_AS(ConfigError, options.buffer_size >= layout.max_chunk(),
              "[offload] offload_param.buffer_size is {} elements, but this rank's largest parameter chunk has {}; "
              "set buffer_size to at least {}", options.buffer_size, layout.max_chunk(), layout.max_chunk());
  DS_CHECK_AS(ConfigError, options.buffer_count >= 3,
              "[offload] offload_param.buffer_count is {}; NVMe parameter offload needs at least 3 buffers (one in "
              "use, one being read ahead, one being written back)", options.buffer_count);
  file_ = std::make_unique<offload::SwapFile>(options.dir, options.file_name, std::max<int64_t>(bytes, 1),
                                              Category::param);
  aio_ = std::make_unique<offload::AioEngine>(options.aio);
  // buffer_count buffers, fewer when max_in_cpu elements cannot hold them all (never fewer than 3), and never more
  // than there are units.
  const int64_t buffer_numel = std::max<int64_t>(1, std::min(options.buffer_size, layout.max_chunk()));
  int64_t slots = std::min(options.buffer_count, std::max<int64_t>(3, options.max_in_cpu / buffer_numel));
  slots = std::min(slots, std::max<int64_t>(1, int64_t(layout.size())));
  slots_.resize(static_cast<size_t>(slots));
  const int64_t buffer_bytes = offload::io_aligned(buffer_numel * es);
  for (Slot& s : slots_) s.buffer = offload::io_buffer(buffer_bytes, Category::comm_buffer, options.pin_memory);
}

SwappedPartition::~SwappedPartition() {
  for (Slot& s : slots_) {
    for (offload::IoTicket* t : {&s.read, &s.write}) {
      try {
        offload::AioEngine::wait(*t);
      } catch (const std::exception& e) {
        if (failure_.empty()) log_warning("{}", e.what());
        failure_ = e.what();
      }
    }
  }
}

void SwappedPartition::check_healthy() const {
  DS_CHECK_AS(IoError, failure_.empty(),
              "[offload] the parameters in '{}' are unusable after an earlier I/O error ({}); the run cannot go on: "
              "resume from the last checkpoint", file_->path(), failure_);
}

void SwappedPartition::wait(offload::IoTicket& t) {
  try {
    stall_seconds_ += offload::AioEngine::wait(t);
  } catch (const IoError& e) {
    failure_ = e.what();
    t = {};
    throw IoError(fmt::format("{}; the parameters in '{}' are lost from this point on: resume from the last "
                              "checkpoint", e.what(), file_->path()));
  }
  t = {};
}

SwappedPartition::Slot* SwappedPartition::find(size_t unit) {
  for (Slot& s : slots_) {
    if (s.unit == static_cast<int64_t>(unit)) return &s;
  }
  return nullptr;
}

SwappedPartition::Slot* SwappedPartition::victim(bool skip_prefetched) {
  Slot* v = nullptr;
  for (Slot& s : slots_) {
    if (s.pins > 0 || (skip_prefetched && s.prefetched)) continue;
    if (!v || s.last_used < v->last_used) v = &s;
  }
  return v;
}

void SwappedPartition::load(Slot& s, size_t unit) {
  wait(s.read);
  if (s.dirty) write_back(s);
  wait(s.write);
  s.unit = static_cast<int64_t>(unit);
  s.prefetched = false;
  s.dirty = false;
  s.last_used = ++clock_;
  const int64_t bytes = offload::io_aligned(layout_[unit].chunk * static_cast<int64_t>(dtype_size(dtype_)));
  s.read = aio_->read(*file_, offset_[unit], s.buffer.raw(), bytes);
  s.valid = true;
}

void SwappedPartition::prefetch(size_t unit) {
  check_healthy();
  if (find(unit)) return;
  Slot* v = victim(/*skip_prefetched=*/true);
  if (!v || v->dirty || !v->write.done()) return;  // never wait here: a prefetch must not stall the caller
  load(*v, unit);
  v->prefetched = true;
}

Tensor SwappedPartition::chunk(size_t unit, bool write) {
  check_healthy();
  Slot* s = find(unit);
  if (!s) {
    s = victim(/*skip_prefetched=*/false);
    DS_CHECK_AS(ConfigError, s != nullptr,
                "[offload] all {} offload_param buffers hold parameter chunks in use; raise offload_param.buffer_count",
                slots_.size());
    load(*s, unit);
  }
  if (s->prefetched) ++prefetch_hits_;
  s->prefetched = false;
  wait(s->read);
  if (write) wait(s->write);  // the buffer is about to change: its last write-back must be done
  ++s->pins;
  s->last_used = ++clock_;
  const size_t index = static_cast<size_t>(s - slots_.data());
  auto pin = std::make_shared<Pin>(this, index, write);
  std::shared_ptr<Storage> pinned(pin, s->buffer.storage().get());  // shares the pin's ownership
  return Tensor::from_storage(std::move(pinned), 0, {layout_[unit].chunk}, dtype_);
}

// A chunk changed stays dirty in its buffer until another changed chunk is let go (or its buffer is needed, or
// sync()): then its write-back starts. So a chunk written in many pieces (initialisation and checkpoint loading go
// parameter by parameter) is written to the file once.
void SwappedPartition::unpin(size_t slot, bool write) {
  Slot& s = slots_[slot];
  --s.pins;
  s.dirty = s.dirty || write;
  if (s.pins > 0 || !write || !failure_.empty()) return;
  try {
    for (Slot& other : slots_) {
      if (&other != &s && other.pins == 0 && other.dirty) write_back(other);
    }
  } catch (const std::exception& e) {  // called from a destructor: never throws; the next use reports it
    failure_ = e.what();
  }
}

void SwappedPartition::write_back(Slot& s) {
  s.dirty = false;
  const auto unit = static_cast<size_t>(s.unit);
  const int64_t bytes = offload::io_aligned(layout_[unit].chunk * static_cast<int64_t>(dtype_size(dtype_)));
  wait(s.write);
  s.write = aio_->write(*file_, offset_[unit], s.buffer.raw(), bytes);
}

void SwappedPartition::sync() {
  check_healthy();
  for (Slot& s : slots_) {
    wait(s.read);
    if (s.dirty && s.pins == 0) write_back(s);
    wait(s.write);
  }
}

OptimizerStateStore::SwapStats SwappedPartition::stats() const {
  return OptimizerStateStore::SwapStats::of(*aio_, stall_seconds_, prefetch_hits_);
}

}  // namespace ds::zero
