// Pieces both communicator backends share (comm-internal): the Work handle a worker thread completes, a grow-only
// staging buffer accounted as host-tier comm_buffer memory, and the ring arithmetic (Note [Ring segments]). The
// worker thread itself is work_queue.h; the elementwise reduction is fold.h.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

#include "ds/comm/communicator.h"
#include "ds/core/memory.h"

namespace ds::comm::detail {

// Completed once by the thread that ran the collective; wait() rethrows its error.
class Completion final : public Work {
 public:
  void finish(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = std::move(error);
    cv_.notify_all();
  }
  void wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  bool test() override {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// A grow-only buffer for staging copies, allocated through the memory tracker (host tier, comm_buffer).
class GrowBuffer {
 public:
  std::byte* reserve(size_t bytes) {
    if (bytes == 0) return storage_ ? static_cast<std::byte*>(storage_->data()) : nullptr;
    if (!storage_ || storage_->bytes() < static_cast<int64_t>(bytes)) {
      storage_.reset();  // release first: the peak is the new size, not old + new
      storage_ = allocate_storage(static_cast<int64_t>(bytes), Category::comm_buffer, Tier::host);
    }
    return static_cast<std::byte*>(storage_->data());
  }
  // A copy of `bytes` bytes of src in the buffer (a send buffer that overlaps its recv buffer is staged here).
  const std::byte* copy_of(const void* src, size_t bytes) {
    std::byte* copy = reserve(bytes);
    if (bytes > 0) std::memcpy(copy, src, bytes);
    return copy;
  }

 private:
  std::shared_ptr<Storage> storage_;
};

// True when two byte ranges share a byte (a send buffer that overlaps its recv buffer must be staged first).
inline bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

// Note [Ring segments]
// A reduction over W ranks splits its buffer into W segments, one per rank, and rank r is responsible for
// segment r: in a ring reduce-scatter it ends holding the sum of segment r, in the local backend's all_reduce it
// folds segment r of every rank's buffer. Segments are `share` elements (the last ones shorter or empty when the
// count does not divide), share being ceil(count / W) rounded up to `granule` elements (16 keeps segments 64-byte
// aligned for f32). In the ring, step k (0 <= k < W-1) has rank r send the running sum of segment
// ring_block(r - k - 1) to rank r+1 and add its own contribution to segment ring_block(r - k - 2), received from
// r-1; after W-1 steps rank r holds segment r summed over all ranks.
class RingSplit {
 public:
  RingSplit(size_t count, int world, size_t granule = 1)
      : count_(count), share_(((count + world - 1) / world + granule - 1) / granule * granule) {}
  size_t share() const { return share_; }
  size_t begin(int r) const { return std::min(count_, share_ * static_cast<size_t>(r)); }
  size_t end(int r) const { return std::min(count_, share_ * static_cast<size_t>(r) + share_); }

 private:
  size_t count_, share_;
};

// Segment index b taken modulo the world (b may be negative: the ring walks backwards).
inline int ring_block(int b, int world) { return (b % world + world) % world; }

}  // namespace ds::comm::detail
