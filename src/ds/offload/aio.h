// Asynchronous file I/O for the offload tiers (DESIGN decision 7): DeepSpeed's DeepNVMe handle (brief §3.2) on
// io_uring. SwapFile is a scratch file opened with O_DIRECT and preallocated whole, so a full or unsuitable disk is
// an error when the run starts, not in the middle of a step. AioEngine moves bytes between aligned host buffers and
// swap files: each request is cut into `intra_op_parallelism` equal parts, one per worker thread with a ring of its
// own, and each part into `block_size` pieces, with up to `queue_depth` pieces in flight per worker (refilled as
// each completes with `overlap_events`, in whole batches without). A request returns a ticket at once; wait()
// blocks until it is done and throws IoError naming the file, the offset and the system's reason when any piece
// failed or came back short.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ds/core/memory.h"
#include "ds/core/tensor.h"

namespace ds::offload {

// O_DIRECT: file offsets, transfer sizes and buffer addresses are multiples of this.
constexpr int64_t kIoAlign = 4096;
constexpr int64_t io_aligned(int64_t bytes) { return (bytes + kIoAlign - 1) / kIoAlign * kIoAlign; }

// The `aio` block of ds_config.json (DeepSpeed's defaults).
struct AioOptions {
  int64_t block_size = 1 << 20;  // bytes per request piece
  int queue_depth = 8;           // pieces in flight per worker
  int intra_op_parallelism = 1;  // worker threads, each taking an equal share of every request
  bool single_submit = false;    // one submission call per piece instead of one per batch
  bool overlap_events = true;    // refill the queue as pieces complete instead of waiting for the whole batch
};

// A scratch file for swapped state under `dir`, named `name`, `bytes` long (rounded up to kIoAlign), reserved with
// fallocate and accounted in the nvme tier (category `cat`). The file is unlinked as soon as it is open, so it
// disappears with the process however the process ends. IoError, naming the path and what to do, when the directory
// is missing or not writable, the file system refuses O_DIRECT, or there is no room for `bytes`.
class SwapFile {
 public:
  SwapFile(const std::string& dir, const std::string& name, int64_t bytes, Category cat);
  ~SwapFile();
  SwapFile(const SwapFile&) = delete;
  SwapFile& operator=(const SwapFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  int64_t bytes() const { return bytes_; }

 private:
  std::string path_;
  int64_t bytes_ = 0;
  int fd_ = -1;
  Category category_;
  MemoryTracker* tracker_ = nullptr;
};

// A page-aligned host buffer of `bytes` (rounded up to kIoAlign; an f32 tensor of that many bytes) for O_DIRECT
// transfers, in the host tier. With
// `pin`, the pages are locked (mlock, DeepSpeed's pinned swap buffers); when the system refuses, a warning says so
// once and the buffer stays pageable.
Tensor io_buffer(int64_t bytes, Category cat, bool pin);

namespace detail {
struct Op;
class Worker;
}  // namespace detail

// A request in flight; default-constructed, it is already done.
class IoTicket {
 public:
  IoTicket() = default;
  bool done() const;

 private:
  friend class AioEngine;
  explicit IoTicket(std::shared_ptr<detail::Op> op) : op_(std::move(op)) {}
  std::shared_ptr<detail::Op> op_;
};

// For tests of the failure paths: the piece that would move the byte at `after_bytes` (counted over all requests of
// the kind since the plan was set) fails with errno `error`, or, with `short_transfer`, moves nothing (a file that
// ends early). Process-wide; `clear` ends it.
struct IoFault {
  bool on_write = true;
  int64_t after_bytes = 0;
  int error = 5;  // EIO
  bool short_transfer = false;
};
void inject_io_fault(const IoFault& fault);
void clear_io_fault();

class AioEngine {
 public:
  explicit AioEngine(const AioOptions& options);
  // Waits for every request in flight (their buffers must outlive the engine's destruction).
  ~AioEngine();
  AioEngine(const AioEngine&) = delete;
  AioEngine& operator=(const AioEngine&) = delete;

  // Reads or writes `bytes` at `offset` of the file from or to `buffer`; all three aligned to kIoAlign (an
  // InternalError otherwise). The buffer must stay alive and untouched until the ticket is waited for.
  IoTicket read(const SwapFile& file, int64_t offset, void* buffer, int64_t bytes);
  IoTicket write(const SwapFile& file, int64_t offset, const void* buffer, int64_t bytes);
  // Blocks until the request is done and returns the seconds it blocked (0 when it was done already); IoError if it
  // failed. Waiting again on a failed ticket throws again.
  static double wait(const IoTicket& ticket);

  const AioOptions& options() const { return options_; }
  // Bytes moved so far, and the seconds during which at least one request was in flight.
  int64_t bytes_read() const { return bytes_read_.load(); }
  int64_t bytes_written() const { return bytes_written_.load(); }
  double busy_seconds() const;

 private:
  IoTicket submit(const SwapFile& file, int64_t offset, void* buffer, int64_t bytes, bool write);
  void op_started();
  void op_finished();
  friend class detail::Worker;

  AioOptions options_;
  std::vector<std::unique_ptr<detail::Worker>> workers_;
  std::atomic<int64_t> bytes_read_{0}, bytes_written_{0};
  mutable std::mutex busy_mutex_;
  int active_ops_ = 0;
  double busy_seconds_ = 0;
  int64_t busy_since_ns_ = 0;
};

}  // namespace ds::offload
