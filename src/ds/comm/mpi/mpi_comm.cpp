// MPI backend: collectives map onto MPI_Allreduce, MPI_Allgather, MPI_Bcast, MPI_Alltoallv and MPI_Isend/Irecv,
// on a private duplicate of MPI_COMM_WORLD (or of a split of it); reduce-scatter is our own ring (Note [Ring
// reduce-scatter]) on a second duplicate.
// Decision: one process-wide "MPI thread" makes every MPI call, MPI_Init_thread and MPI_Finalize included. Async
// forms queue a task on it (FIFO across all communicators, like one NCCL stream) and point-to-point requests are
// polled there with MPI_Testsome, so the design needs only MPI_THREAD_FUNNELED; we still ask for MULTIPLE so that
// abort() may call MPI_Abort from whatever thread fails while the MPI thread sits in a collective.
#include "ds/comm/mpi/mpi_comm.h"

// The C API only: OpenMPI's deprecated C++ bindings add nothing and warn under -Wextra.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "ds/comm/backend_util.h"
#include "ds/comm/fold.h"
#include "ds/comm/work_queue.h"
#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/core/memory.h"

namespace ds::comm {
namespace {

using comm::detail::Completion;
using comm::detail::GrowBuffer;
using comm::detail::overlaps;
using comm::detail::ring_block;
using comm::detail::WorkQueue;

[[noreturn]] void throw_mpi_error(const char* call, int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof(text), "error code %d", code);
  DS_THROW(CommError, "[comm] {} failed: {}", call, text);
}

// The one check for MPI calls: a failure becomes a CommError naming the call and MPI's own message.
#define DS_MPI_CHECK(call)                                            \
  do {                                                                \
    const int ds_mpi_rc_ = (call);                                    \
    if (ds_mpi_rc_ != MPI_SUCCESS) throw_mpi_error(#call, ds_mpi_rc_); \
  } while (0)


// The process-wide MPI thread: a WorkQueue whose thread calls MPI_Init_thread first and MPI_Finalize last, and
// whose deferred tasks are MPI_Isend/MPI_Irecv requests, completed by MPI_Testsome in its poll hook. Created on
// first use; at process exit it drains its queue, calls MPI_Finalize (only if it called MPI_Init itself) and is
// deleted. If it is stuck in a collective whose peers died without MPI_Abort, exit goes on without MPI_Finalize and
// the engine is leaked rather than destroyed under its thread.
class MpiEngine {
 public:
  static MpiEngine& instance() {
    struct Holder {
      MpiEngine* engine = new MpiEngine;
      ~Holder() {
        if (engine->shutdown()) delete engine;
      }
    };
    static Holder holder;
    DS_CHECK_AS(CommError, holder.engine->init_error_.empty(), "{}", holder.engine->init_error_);
    return *holder.engine;
  }

  // Tasks run under the memory tracker of the submitting thread, so staging buffers count for the right rank.
  WorkPtr submit(std::function<void()> task) { return queue_.submit(std::move(task)); }
  // Runs `post` (an MPI_Isend/MPI_Irecv) on the MPI thread; the Work completes when its request does.
  WorkPtr submit_request(std::function<void(MPI_Request*)> post) {
    return queue_.submit_deferred([this, post = std::move(post)](std::shared_ptr<Completion> work) {
      MPI_Request request = MPI_REQUEST_NULL;
      post(&request);
      pending_.push_back(request);
      pending_work_.push_back(std::move(work));
    });
  }
  void run(std::function<void()> task) { submit(std::move(task))->wait(); }

  bool stopped() const { return queue_.stopping(); }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

 private:
  MpiEngine()
      : queue_({.on_start = [this] { initialize(); },
                .on_exit = [this] { finalize(); },
                .poll = [this] { return poll_requests(); },
                .pending = [this] { return !pending_.empty(); }},
               "[comm] MPI call during process exit (after MPI_Finalize began)") {
    queue_.start();
  }

  // True once the thread has finished (and finalised); false if it is still busy after half a minute.
  bool shutdown() {
    if (queue_.stop(std::chrono::seconds(30))) return true;
    std::fprintf(stderr, "error: [comm] MPI thread still busy at exit; leaving without MPI_Finalize\n");
    return false;
  }

  void initialize() {
    int already = 0;
    MPI_Initialized(&already);
    if (already) {
      int provided = MPI_THREAD_SINGLE;
      MPI_Query_thread(&provided);
      if (provided < MPI_THREAD_SERIALIZED) {
        init_error_ =
            "[comm] MPI was initialised by someone else with a thread level below MPI_THREAD_SERIALIZED; "
            "initialise it with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...) or let deepspeed.cpp do it";
        return;
      }
    } else {
      int provided = MPI_THREAD_SINGLE;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) {
        init_error_ = fmt::format("[comm] MPI_Init_thread failed (code {}); check the MPI installation", rc);
        return;
      }
      we_initialized_ = true;
      if (provided < MPI_THREAD_MULTIPLE) {
        log_warning("[comm] MPI provides thread level {} (not MULTIPLE); MPI_Abort from other threads is then "
                    "outside the MPI standard",
                    provided);
      }
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
    if (world_size_ > 1) set_log_rank(world_rank_, world_size_);
  }

  void finalize() {
    if (!we_initialized_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (!pending_.empty()) {
      std::fprintf(stderr, "error: [comm] %zu MPI send/recv never completed; leaving without MPI_Finalize\n",
                   pending_.size());
      return;
    }
    MPI_Finalize();
  }

  // Completes the finished point-to-point requests; true if any finished.
  bool poll_requests() {
    int done = 0;
    indices_.resize(pending_.size());
    statuses_.resize(pending_.size());
    const int rc = MPI_Testsome(static_cast<int>(pending_.size()), pending_.data(), &done, indices_.data(),
                                statuses_.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
      // Every request in the set is suspect: fail them all rather than poll forever.
      for (auto& w : pending_work_) {
        try {
          throw_mpi_error("MPI_Testsome", rc);
        } catch (...) {
          w->finish(std::current_exception());
        }
      }
      pending_.clear();
      pending_work_.clear();
      return true;
    }
    if (done == MPI_UNDEFINED || done == 0) return false;
    for (int i = 0; i < done; ++i) {
      const int k = indices_[i];
      std::exception_ptr error;
      if (rc == MPI_ERR_IN_STATUS && statuses_[i].MPI_ERROR != MPI_SUCCESS) {
        try {
          throw_mpi_error("MPI_Isend/MPI_Irecv", statuses_[i].MPI_ERROR);
        } catch (...) {
          error = std::current_exception();
        }
      }
      pending_work_[k]->finish(error);
      pending_work_[k].reset();
    }
    // MPI set the completed requests to MPI_REQUEST_NULL: compact both lists together.
    size_t out = 0;
    for (size_t k = 0; k < pending_.size(); ++k) {
      if (pending_work_[k]) {
        pending_[out] = pending_[k];
        pending_work_[out] = std::move(pending_work_[k]);
        ++out;
      }
    }
    pending_.resize(out);
    pending_work_.resize(out);
    return true;
  }

  // Owned by the MPI thread (the queue's hooks run there).
  std::string init_error_;
  bool we_initialized_ = false;
  int world_rank_ = 0, world_size_ = 1;
  std::vector<MPI_Request> pending_;
  std::vector<std::shared_ptr<Completion>> pending_work_;
  std::vector<int> indices_;
  std::vector<MPI_Status> statuses_;
  WorkQueue queue_;  // last member: its thread uses the members above
};

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::i32: return MPI_INT32_T;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;  // moved as bits; sums go through our ring (combine_half)
    case DType::u8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_SUM;
}


// Note [Ring reduce-scatter]
// OpenMPI's MPI_Reduce_scatter_block for large blocks reduces everything to one rank and scatters (basic linear),
// with temporaries of the whole send buffer (two of them: 300 MB for a 150 MB send), and it is not
// bandwidth-optimal. Ours is the ring of Note [Ring segments] (backend_util.h): in N-1 steps rank r sends the
// running partial sum of block (r - k - 1) mod N to rank r+1 and adds its own contribution of block
// (r - k - 2) mod N to what it receives from r-1; after the last step it holds block r summed over all ranks.
// Blocks go in segments of kRingSegment elements, so the only temporaries are two segments in the staging buffer.
// Every rank sends (N-1)/N of its send buffer, which is the ring count of Note [Traffic accounting]. Partial sums
// travel from rank r-1 to r, so the order of addition is fixed by the ranks, and the result is the same on every
// run. The additions are the fold of fold.h (16-bit data through fp32, rounded at every hop, as NCCL does).
constexpr size_t kRingSegment = size_t{1} << 20;

// MPI counts are int; in-place collectives on contiguous buffers are cut into pieces of at most this many.
constexpr size_t kMaxPiece = size_t{1} << 30;

// f(piece, n) over `count` elements of `data` in pieces of at most kMaxPiece.
template <typename F>
void for_pieces(void* data, size_t count, DType dtype, F&& f) {
  auto* p = static_cast<std::byte*>(data);
  const size_t es = dtype_size(dtype);
  for (size_t done = 0; done < count;) {
    const size_t piece = std::min(kMaxPiece, count - done);
    f(p + done * es, static_cast<int>(piece));
    done += piece;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MpiEngine& engine, MPI_Comm comm) : engine_(engine), comm_(comm) {
    engine_.run([&] {
      DS_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
      DS_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
      DS_MPI_CHECK(MPI_Comm_size(comm_, &size_));
      DS_MPI_CHECK(MPI_Comm_dup(comm_, &ring_comm_));
    });
  }
  ~MpiCommunicator() override {
    // Queued after this communicator's pending work, which may still use staging_: wait for it.
    if (engine_.stopped()) return;
    try {
      engine_.run([this] {
        MPI_Comm_free(&ring_comm_);
        MPI_Comm_free(&comm_);
      });
    } catch (...) {
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    engine_.run([&, this] { DS_MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub)); });
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::make_unique<MpiCommunicator>(engine_, sub);
  }

  void abort(const std::string& reason) noexcept override {
    // Straight from the calling thread: the MPI thread may be inside a collective that will never complete.
    std::fprintf(stderr, "error: [comm] rank %d/%d aborting the MPI job: %s\n", engine_.world_rank(),
                 engine_.world_size(), reason.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);  // does not return: the launcher kills every rank
  }

 protected:
  WorkPtr do_all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    if (dtype == DType::f16 || dtype == DType::bf16) {
      check_count("all_reduce (16-bit)", count);
      return engine_.submit([=, this] { all_reduce_half(data, count, dtype, op); });
    }
    return engine_.submit([=, this] {
      for_pieces(data, count, dtype, [&](std::byte* p, int n) {
        DS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p, n, mpi_type(dtype), mpi_op(op), comm_));
      });
    });
  }

  WorkPtr do_reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) override {
    check_count("reduce_scatter", count);
    return engine_.submit([=, this] {
      const size_t block = count * dtype_size(dtype);
      const void* src = send;
      // The ring reads every block of send until the end; recv may only alias send's own block.
      const bool own_block = recv == static_cast<const std::byte*>(send) + rank_ * block;
      if (!own_block && overlaps(send, block * size_, recv, block)) src = staging_.copy_of(send, block * size_);
      ring_reduce_scatter(static_cast<const std::byte*>(src), static_cast<std::byte*>(recv), count, op, dtype);
    });
  }

  WorkPtr do_all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    check_count("all_gather", count);
    return engine_.submit([=, this] {
      const size_t block = count * dtype_size(dtype);
      auto* out = static_cast<std::byte*>(recv);
      const void* src = send;
      if (send == out + rank_ * block) {
        src = MPI_IN_PLACE;
      } else if (overlaps(send, block, recv, block * size_)) {
        src = staging_.copy_of(send, block);
      }
      DS_MPI_CHECK(MPI_Allgather(src, static_cast<int>(count), mpi_type(dtype), recv, static_cast<int>(count),
                                 mpi_type(dtype), comm_));
    });
  }

  WorkPtr do_broadcast(void* data, size_t count, DType dtype, int root) override {
    return engine_.submit([=, this] {
      for_pieces(data, count, dtype, [&](std::byte* p, int n) {
        DS_MPI_CHECK(MPI_Bcast(p, n, mpi_type(dtype), root, comm_));
      });
    });
  }

  WorkPtr do_all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                          const std::vector<size_t>& recv_counts, DType dtype) override {
    size_t send_total = 0, recv_total = 0;
    for (int r = 0; r < size_; ++r) {
      send_total += send_counts[r];
      recv_total += recv_counts[r];
    }
    check_count("all_to_all_v (total sent)", send_total);
    check_count("all_to_all_v (total received)", recv_total);
    return engine_.submit([=, this] {
      // Counts and displacements live in grow-only members; only the MPI thread touches them.
      counts_.resize(4 * size_);
      int* sc = counts_.data();
      int* sd = sc + size_;
      int* rc = sd + size_;
      int* rd = rc + size_;
      int s_off = 0, r_off = 0;
      for (int r = 0; r < size_; ++r) {
        sc[r] = static_cast<int>(send_counts[r]);
        sd[r] = s_off;
        s_off += sc[r];
        rc[r] = static_cast<int>(recv_counts[r]);
        rd[r] = r_off;
        r_off += rc[r];
      }
      const size_t es = dtype_size(dtype);
      const void* src = send;
      if (overlaps(send, send_total * es, recv, recv_total * es)) src = staging_.copy_of(send, send_total * es);
      DS_MPI_CHECK(MPI_Alltoallv(src, sc, sd, mpi_type(dtype), recv, rc, rd, mpi_type(dtype), comm_));
    });
  }

  WorkPtr do_send(const void* data, size_t count, DType dtype, int peer, int tag) override {
    check_count("send", count);
    return engine_.submit_request([=, this](MPI_Request* request) {
      DS_MPI_CHECK(MPI_Isend(data, static_cast<int>(count), mpi_type(dtype), peer, tag, comm_, request));
    });
  }

  WorkPtr do_recv(void* data, size_t count, DType dtype, int peer, int tag) override {
    check_count("recv", count);
    return engine_.submit_request([=, this](MPI_Request* request) {
      DS_MPI_CHECK(MPI_Irecv(data, static_cast<int>(count), mpi_type(dtype), peer, tag, comm_, request));
    });
  }

  WorkPtr do_barrier() override {
    return engine_.submit([this] { DS_MPI_CHECK(MPI_Barrier(comm_)); });
  }

 private:
  static void check_count(const char* what, size_t count) {
    DS_CHECK_AS(CommError, count <= static_cast<size_t>(INT_MAX),
                "[comm] {} of {} elements exceeds MPI's limit of {} per rank; split the buffer", what, count,
                INT_MAX);
  }

  // Note [Ring reduce-scatter]; runs on the MPI thread.
  void ring_reduce_scatter(const std::byte* send, std::byte* recv, size_t count, ReduceOp op, DType dtype) {
    const size_t es = dtype_size(dtype);
    if (size_ == 1) {
      if (recv != send) std::memcpy(recv, send, count * es);
      return;
    }
    const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
    const size_t seg_max = std::min(count, kRingSegment);
    std::byte* out = ring_staging_.reserve(2 * seg_max * es);
    std::byte* in = out + seg_max * es;
    auto block = [&](int b) { return send + static_cast<size_t>(ring_block(b, size_)) * count * es; };
    for (size_t s0 = 0; s0 < count; s0 += seg_max) {
      const size_t seg = std::min(seg_max, count - s0);
      std::memcpy(out, block(rank_ - 1) + s0 * es, seg * es);
      for (int k = 0; k < size_ - 1; ++k) {
        DS_MPI_CHECK(MPI_Sendrecv(out, static_cast<int>(seg), mpi_type(dtype), next, 0, in, static_cast<int>(seg),
                                  mpi_type(dtype), prev, 0, ring_comm_, MPI_STATUS_IGNORE));
        // `in` is the partial sum of block (rank - k - 2): add our contribution (the last one is our own block).
        fold_into(in, block(rank_ - k - 2) + s0 * es, seg, dtype, op);
        std::swap(in, out);
      }
      std::memcpy(recv + s0 * es, out, seg * es);
    }
  }

  // 16-bit all-reduce: our ring reduce-scatter, then MPI_Allgather, when the count splits over the ranks; else
  // through fp32 (MPI has no 16-bit float sum).
  void all_reduce_half(void* data, size_t count, DType dtype, ReduceOp op) {
    auto* p = static_cast<std::byte*>(data);
    if (count % static_cast<size_t>(size_) == 0) {
      const size_t block = count / static_cast<size_t>(size_);
      ring_reduce_scatter(p, p + rank_ * block * 2, block, op, dtype);
      DS_MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p, static_cast<int>(block), MPI_UINT16_T, comm_));
      return;
    }
    float* wide = reinterpret_cast<float*>(staging_.reserve(count * sizeof(float)));
    to_f32(wide, p, dtype, count);
    DS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, wide, static_cast<int>(count), MPI_FLOAT, mpi_op(op), comm_));
    from_f32(p, wide, dtype, count);
  }

  MpiEngine& engine_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  MPI_Comm ring_comm_ = MPI_COMM_NULL;  // point-to-point steps of our own collectives (no clash with user tags)
  GrowBuffer staging_;              // MPI thread only
  GrowBuffer ring_staging_;         // MPI thread only: two ring segments
  std::vector<int> counts_;         // MPI thread only
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world() {
  MpiEngine& engine = MpiEngine::instance();
  MPI_Comm comm = MPI_COMM_NULL;
  engine.run([&] { DS_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm)); });
  return std::make_unique<MpiCommunicator>(engine, comm);
}

}  // namespace ds::comm
