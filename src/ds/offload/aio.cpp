// io_uring file I/O for offload (see the header). Each worker thread owns one ring and a queue of pieces; it keeps
// up to queue_depth of them submitted, reaps completions, resubmits the rest of a piece that came back short but
// not empty (the kernel may split a transfer), and counts a piece done when all its bytes moved or it failed. An op
// (one read() or write()) is done when all its pieces are.
#include "ds/offload/aio.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <thread>

#include "ds/core/error.h"
#include "ds/core/log.h"

namespace ds::offload {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string errno_text(int err) { return std::strerror(err); }

// The injected fault (IoFault), checked by the workers before each piece is submitted.
struct FaultState {
  std::mutex mutex;
  bool armed = false;
  IoFault fault;
  int64_t seen = 0;  // bytes of the fault's kind submitted since it was set
};
FaultState& fault_state() {
  static FaultState s;
  return s;
}

// 0: submit the piece; else the errno to fail it with (-1: a short transfer of zero bytes).
int injected_fault(bool write, int64_t bytes) {
  FaultState& s = fault_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.armed || s.fault.on_write != write) return 0;
  const int64_t before = s.seen;
  s.seen += bytes;
  if (s.fault.after_bytes >= before + bytes) return 0;
  s.armed = false;  // one failure per plan
  return s.fault.short_transfer ? -1 : s.fault.error;
}

}  // namespace

void inject_io_fault(const IoFault& fault) {
  FaultState& s = fault_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.armed = true;
  s.fault = fault;
  s.seen = 0;
}

void clear_io_fault() {
  FaultState& s = fault_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.armed = false;
}

// ---- SwapFile ---------------------------------------------------------------------------------------------------

SwapFile::SwapFile(const std::string& dir, const std::string& name, int64_t bytes, Category cat)
    : path_(dir + "/" + name), bytes_(io_aligned(std::max<int64_t>(bytes, 1))), category_(cat) {
  struct stat st {};
  DS_CHECK_AS(IoError, ::stat(dir.c_str(), &st) == 0,
              "[offload] nvme_path '{}' does not exist ({}); create the directory, or point nvme_path at a directory "
              "on the NVMe drive", dir, errno_text(errno));
  DS_CHECK_AS(IoError, S_ISDIR(st.st_mode), "[offload] nvme_path '{}' is not a directory; point nvme_path at a "
              "directory on the NVMe drive", dir);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    const int err = errno;
    DS_CHECK_AS(IoError, err != EINVAL,
                "[offload] the file system of nvme_path '{}' does not support direct I/O (O_DIRECT), which swapping "
                "needs to bypass the page cache; point nvme_path at a directory on a local ext4 or xfs drive", dir);
    throw IoError(fmt::format("[offload] cannot create the swap file '{}' ({}); nvme_path must be a writable "
                              "directory", path_, errno_text(err)));
  }
  ::unlink(path_.c_str());  // scratch: gone with the process, however it ends
  struct statvfs fs {};
  const int64_t free_bytes =
      ::fstatvfs(fd_, &fs) == 0 ? static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize) : -1;
  const int rc = ::posix_fallocate(fd_, 0, bytes_);
  if (rc != 0) {
    ::close(fd_);
    fd_ = -1;
    throw IoError(fmt::format("[offload] cannot reserve {} for the swap file '{}' ({}; {} free there); free space "
                              "on that drive, point nvme_path at a larger one, or offload less (device 'cpu')",
                              format_bytes(bytes_), path_, errno_text(rc),
                              free_bytes >= 0 ? format_bytes(free_bytes) : std::string("unknown")));
  }
  tracker_ = &current_tracker();
  try {
    tracker_->on_alloc(Tier::nvme, category_, bytes_);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

SwapFile::~SwapFile() {
  if (fd_ >= 0) ::close(fd_);
  if (tracker_) tracker_->on_free(Tier::nvme, category_, bytes_);
}

// ---- buffers ----------------------------------------------------------------------------------------------------

Tensor io_buffer(int64_t bytes, Category cat, bool pin) {
  const int64_t n = io_aligned(std::max<int64_t>(bytes, 1));
  std::shared_ptr<Storage> s = allocate_storage(n, cat, Tier::host, Device::cpu(), static_cast<size_t>(kIoAlign));
  if (pin && ::mlock(s->data(), static_cast<size_t>(n)) != 0) {
    static std::once_flag warned;
    const int err = errno;
    std::call_once(warned, [&] {
      log_warning("[offload] pin_memory: the system refused to lock {} of swap buffers ({}); they stay pageable. "
                  "Raise the locked-memory limit (ulimit -l) to pin them",
                  format_bytes(n), errno_text(err));
    });
  }
  return Tensor::from_storage(std::move(s), 0, {n / static_cast<int64_t>(sizeof(float))}, DType::f32);
}

// ---- the engine -------------------------------------------------------------------------------------------------

namespace detail {

struct Op {
  std::mutex mutex;
  std::condition_variable cv;
  int pending = 0;  // pieces not yet done
  bool done = false;
  std::string error;  // the first failure
  AioEngine* engine = nullptr;
};

struct Piece {
  std::shared_ptr<Op> op;
  const SwapFile* file;
  char* buffer;
  int64_t offset, bytes;
  bool write;
};

class Worker {
 public:
  explicit Worker(const AioOptions& o) : options_(o) {
    const int rc = io_uring_queue_init(static_cast<unsigned>(o.queue_depth), &ring_, 0);
    DS_CHECK_AS(IoError, rc == 0, "[offload] cannot set up io_uring with queue depth {} ({}); lower aio.queue_depth, "
                "or check that io_uring is allowed (/proc/sys/kernel/io_uring_disabled)", o.queue_depth,
                errno_text(-rc));
    thread_ = std::thread([this] { run(); });
  }
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    io_uring_queue_exit(&ring_);
  }

  // Counts a piece of its op done (failed when `error` is not empty); the last one completes the op.
  static void finish_piece(const Piece& p, const std::string& error) {
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(p.op->mutex);
      if (!error.empty() && p.op->error.empty()) p.op->error = error;
      last = --p.op->pending == 0;
      if (last) p.op->done = true;
    }
    if (last) {
      p.op->engine->op_finished();
      p.op->cv.notify_all();
    }
  }

  void push(std::vector<Piece>&& pieces) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Piece& p : pieces) queue_.push_back(std::move(p));
    }
    cv_.notify_all();
  }

 private:
  void run() {
    std::vector<Piece*> slots;  // in flight, by user_data
    for (;;) {
      std::vector<Piece> fresh;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        // Without overlap_events a new batch starts only when the last one is wholly done.
        const int room = options_.overlap_events ? options_.queue_depth - inflight_
                                                 : (inflight_ == 0 ? options_.queue_depth : 0);
        if (inflight_ == 0) cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !retry_.empty(); });
        if (stop_ && queue_.empty() && retry_.empty() && inflight_ == 0) return;
        for (int i = 0; i < room && (!retry_.empty() || !queue_.empty()); ++i) {
          std::deque<Piece>& from = retry_.empty() ? queue_ : retry_;
          fresh.push_back(std::move(from.front()));
          from.pop_front();
        }
      }
      int prepared = 0;
      for (Piece& p : fresh) {
        const int fault = injected_fault(p.write, p.bytes);
        if (fault != 0) {
          finish_piece(p, fault < 0 ? describe(p, "the file ended early (0 bytes moved)")
                                    : describe(p, errno_text(fault)));
          continue;
        }
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        DS_ASSERT(sqe != nullptr, "io_uring submission queue full with {} in flight", inflight_);
        auto* owned = new Piece(std::move(p));
        if (owned->write) {
          io_uring_prep_write(sqe, owned->file->fd(), owned->buffer, static_cast<unsigned>(owned->bytes),
                              static_cast<uint64_t>(owned->offset));
        } else {
          io_uring_prep_read(sqe, owned->file->fd(), owned->buffer, static_cast<unsigned>(owned->bytes),
                             static_cast<uint64_t>(owned->offset));
        }
        io_uring_sqe_set_data(sqe, owned);
        ++prepared;
        if (options_.single_submit) submit(1);
      }
      if (!options_.single_submit && prepared > 0) submit(prepared);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        inflight_ += prepared;
      }
      if (inflight_ > 0) reap();
    }
  }

  void submit(int n) {
    int left = n;
    while (left > 0) {
      const int rc = io_uring_submit(&ring_);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      DS_ASSERT(rc >= 0, "io_uring_submit: {}", errno_text(-rc));
      left -= rc;
      if (rc == 0) break;
    }
  }

  // Waits for one completion and takes every one that is ready.
  void reap() {
    io_uring_cqe* cqe = nullptr;
    int rc = 0;
    do {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    } while (rc == -EINTR);
    DS_ASSERT(rc == 0, "io_uring_wait_cqe: {}", errno_text(-rc));
    int taken = 0;
    while (cqe != nullptr) {
      std::unique_ptr<Piece> p(static_cast<Piece*>(io_uring_cqe_get_data(cqe)));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      ++taken;
      complete(std::move(p), res);
      cqe = nullptr;
      if (io_uring_peek_cqe(&ring_, &cqe) != 0) cqe = nullptr;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    inflight_ -= taken;
  }

  void complete(std::unique_ptr<Piece> p, int res) {
    if (res == -EINTR || res == -EAGAIN) {
      requeue(std::move(*p));
      return;
    }
    if (res < 0) {
      finish_piece(*p, describe(*p, errno_text(-res)));
      return;
    }
    if (res == 0) {
      finish_piece(*p, describe(*p, "the file ended early (0 bytes moved)"));
      return;
    }
    std::atomic<int64_t>& counter = p->write ? p->op->engine->bytes_written_ : p->op->engine->bytes_read_;
    counter += res;
    if (res < p->bytes) {  // the rest of a split transfer
      p->buffer += res;
      p->offset += res;
      p->bytes -= res;
      requeue(std::move(*p));
      return;
    }
    finish_piece(*p, {});
  }

  void requeue(Piece&& p) {
    std::lock_guard<std::mutex> lock(mutex_);
    retry_.push_back(std::move(p));
  }

  static std::string describe(const Piece& p, const std::string& why) {
    return fmt::format("[offload] {} '{}' ({} at offset {}) failed: {}", p.write ? "writing" : "reading",
                       p.file->path(), format_bytes(p.bytes), p.offset, why);
  }

  AioOptions options_;
  io_uring ring_{};
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Piece> queue_, retry_;
  int inflight_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace detail

bool IoTicket::done() const {
  if (!op_) return true;
  std::lock_guard<std::mutex> lock(op_->mutex);
  return op_->done;
}

AioEngine::AioEngine(const AioOptions& options) : options_(options) {
  DS_CHECK_AS(ConfigError,
              options.block_size >= kIoAlign && options.block_size % kIoAlign == 0 && options.block_size <= (1 << 30),
              "[offload] aio.block_size is {}; it must be a multiple of {} (direct I/O) from {} to 1 GiB",
              options.block_size, kIoAlign, kIoAlign);
  DS_CHECK_AS(ConfigError, options.queue_depth >= 1 && options.queue_depth <= 4096,
              "[offload] aio.queue_depth is {}; expected 1 to 4096", options.queue_depth);
  DS_CHECK_AS(ConfigError, options.intra_op_parallelism >= 1 && options.intra_op_parallelism <= 64,
              "[offload] aio.intra_op_parallelism is {}; expected 1 to 64", options.intra_op_parallelism);
  for (int i = 0; i < options.intra_op_parallelism; ++i) workers_.push_back(std::make_unique<detail::Worker>(options));
}

AioEngine::~AioEngine() { workers_.clear(); }  // each worker drains its queue before it stops

IoTicket AioEngine::read(const SwapFile& file, int64_t offset, void* buffer, int64_t bytes) {
  return submit(file, offset, buffer, bytes, false);
}

IoTicket AioEngine::write(const SwapFile& file, int64_t offset, const void* buffer, int64_t bytes) {
  return submit(file, offset, const_cast<void*>(buffer), bytes, true);
}

IoTicket AioEngine::submit(const SwapFile& file, int64_t offset, void* buffer, int64_t bytes, bool write) {
  DS_ASSERT(offset % kIoAlign == 0 && bytes % kIoAlign == 0 && reinterpret_cast<uintptr_t>(buffer) % kIoAlign == 0,
            "unaligned direct I/O: offset {}, {} bytes, buffer {}", offset, bytes, buffer);
  DS_ASSERT(offset >= 0 && offset + bytes <= file.bytes(), "I/O at [{}, {}) of a {}-byte swap file", offset,
            offset + bytes, file.bytes());
  if (bytes == 0) return {};
  auto op = std::make_shared<detail::Op>();
  op->engine = this;
  // Equal shares per worker, in whole alignment units; each share in block_size pieces.
  const auto workers = static_cast<int64_t>(workers_.size());
  const int64_t units = bytes / kIoAlign;
  std::vector<std::vector<detail::Piece>> shares(workers_.size());
  int pieces = 0;
  for (int64_t w = 0, at = 0; w < workers; ++w) {
    const int64_t share = (units / workers + (w < units % workers ? 1 : 0)) * kIoAlign;
    for (int64_t done = 0; done < share;) {
      const int64_t n = std::min(options_.block_size, share - done);
      shares[static_cast<size_t>(w)].push_back(
          {op, &file, static_cast<char*>(buffer) + at + done, offset + at + done, n, write});
      done += n;
      ++pieces;
    }
    at += share;
  }
  op->pending = pieces;
  op_started();
  for (size_t w = 0; w < workers_.size(); ++w) {
    if (!shares[w].empty()) workers_[w]->push(std::move(shares[w]));
  }
  return IoTicket(std::move(op));
}

double AioEngine::wait(const IoTicket& ticket) {
  if (!ticket.op_) return 0.0;
  detail::Op& op = *ticket.op_;
  std::unique_lock<std::mutex> lock(op.mutex);
  const int64_t t0 = op.done ? 0 : now_ns();
  op.cv.wait(lock, [&] { return op.done; });
  if (!op.error.empty()) throw IoError(op.error);
  return t0 == 0 ? 0.0 : static_cast<double>(now_ns() - t0) * 1e-9;
}

void AioEngine::op_started() {
  std::lock_guard<std::mutex> lock(busy_mutex_);
  if (active_ops_++ == 0) busy_since_ns_ = now_ns();
}

void AioEngine::op_finished() {
  std::lock_guard<std::mutex> lock(busy_mutex_);
  if (--active_ops_ == 0) busy_seconds_ += static_cast<double>(now_ns() - busy_since_ns_) * 1e-9;
}

double AioEngine::busy_seconds() const {
  std::lock_guard<std::mutex> lock(busy_mutex_);
  return busy_seconds_ + (active_ops_ > 0 ? static_cast<double>(now_ns() - busy_since_ns_) * 1e-9 : 0.0);
}

}  // namespace ds::offload
