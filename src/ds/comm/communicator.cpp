// Communicator basics: collective names, CommStats, the checks and traffic count every collective makes before
// its backend sees it (Note [Traffic accounting]), and the world of one (make_self_communicator).
// The self communicator runs every collective inline on the caller's thread and hands back an already-completed
// Work: with no peers there is nothing to overlap. It counts calls and payload but 0 ring bytes (no transport),
// and after abort() every call throws, as a real backend's would. Point-to-point has no peer and is an error.
#include "ds/comm/communicator.h"

#include <cstring>
#include <exception>
#include <limits>

#include "ds/core/error.h"

namespace ds::comm {

std::string_view collective_name(Collective c) {
  switch (c) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::all_gather: return "all_gather";
    case Collective::broadcast: return "broadcast";
    case Collective::all_to_all: return "all_to_all";
    case Collective::send: return "send";
    case Collective::recv: return "recv";
    case Collective::barrier: return "barrier";
  }
  return "?";
}

int64_t CommStats::total_bytes() const {
  int64_t total = 0;
  for (int64_t b : bytes) total += b;
  return total;
}

int64_t CommStats::total_payload() const {
  int64_t total = 0;
  for (int64_t b : payload) total += b;
  return total;
}

void CommStats::reset() { *this = CommStats{}; }

int64_t ring_bytes(Collective c, int64_t n, int world) {
  switch (c) {
    case Collective::all_reduce: return 2 * n * (world - 1) / world;
    case Collective::reduce_scatter:
    case Collective::all_gather: return n * (world - 1) / world;
    default: return n;
  }
}

void CommStats::record(Collective c, int64_t ring_bytes, int64_t payload_bytes) {
  const auto i = static_cast<size_t>(c);
  calls[i] += 1;
  bytes[i] += ring_bytes;
  payload[i] += payload_bytes;
}

namespace {

// Bytes of `blocks` x `count` elements, checked to be addressable (and the dtype to be one we know).
int64_t checked_bytes(const char* what, size_t count, DType dtype, size_t blocks = 1) {
  const size_t es = dtype_size(dtype);
  DS_CHECK_AS(CommError, es != 0, "[comm] {}: unknown dtype (code {})", what, static_cast<int>(dtype));
  DS_CHECK_AS(CommError, blocks == 0 || count <= static_cast<size_t>(std::numeric_limits<int64_t>::max()) / es / blocks,
              "[comm] {} of {} x {} {} elements is larger than memory can hold; check the count", what, blocks,
              count, dtype_name(dtype));
  return static_cast<int64_t>(count * blocks * es);
}

void check_buffer(const char* what, const char* name, const void* p, int64_t bytes, DType dtype) {
  DS_CHECK_AS(CommError, p != nullptr || bytes == 0,
              "[comm] {}: the {} buffer is null but the call names {} bytes of {} data; pass a buffer of at least "
              "that size", what, name, bytes, dtype_name(dtype));
}

// Reductions take numbers: u8 buffers (packed signs, quantized blocks) are moved, never summed.
void check_reducible(const char* what, DType dtype) {
  DS_CHECK_AS(CommError, dtype != DType::u8, "[comm] {}: u8 buffers hold raw bytes and cannot be reduced; reduce "
              "f32, i32, f16 or bf16 data (move bytes with all_gather or all_to_all)", what);
}

void check_rank(const char* what, const char* role, int r, int world) {
  DS_CHECK_AS(CommError, r >= 0 && r < world, "[comm] {}: {} {} is outside the world of {} (ranks 0..{})", what,
              role, r, world, world - 1);
}

}  // namespace

void Communicator::record(Collective c, int64_t ring_bytes, int64_t payload_bytes) {
  stats_.record(c, counts_ring_bytes_ ? ring_bytes : 0, payload_bytes);
}

WorkPtr Communicator::all_reduce_async(void* data, size_t count, DType dtype, ReduceOp op) {
  const int64_t n = checked_bytes("all_reduce", count, dtype);
  check_reducible("all_reduce", dtype);
  check_buffer("all_reduce", "data", data, n, dtype);
  WorkPtr w = do_all_reduce(data, count, dtype, op);
  record(Collective::all_reduce, ring_bytes(Collective::all_reduce, n, size()), n);
  return w;
}

WorkPtr Communicator::reduce_scatter_async(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) {
  const int64_t n = checked_bytes("reduce_scatter", count, dtype, static_cast<size_t>(size()));
  check_reducible("reduce_scatter", dtype);
  check_buffer("reduce_scatter", "send", send, n, dtype);
  check_buffer("reduce_scatter", "recv", recv, n / size(), dtype);
  WorkPtr w = do_reduce_scatter(send, recv, count, dtype, op);
  record(Collective::reduce_scatter, ring_bytes(Collective::reduce_scatter, n, size()), n);
  return w;
}

WorkPtr Communicator::all_gather_async(const void* send, void* recv, size_t count, DType dtype) {
  const int64_t n = checked_bytes("all_gather", count, dtype, static_cast<size_t>(size()));
  check_buffer("all_gather", "send", send, n / size(), dtype);
  check_buffer("all_gather", "recv", recv, n, dtype);
  WorkPtr w = do_all_gather(send, recv, count, dtype);
  record(Collective::all_gather, ring_bytes(Collective::all_gather, n, size()), n);
  return w;
}

WorkPtr Communicator::broadcast_async(void* data, size_t count, DType dtype, int root) {
  const int64_t n = checked_bytes("broadcast", count, dtype);
  check_rank("broadcast", "root", root, size());
  check_buffer("broadcast", "data", data, n, dtype);
  WorkPtr w = do_broadcast(data, count, dtype, root);
  record(Collective::broadcast, rank() == root ? n : 0, n);
  return w;
}

WorkPtr Communicator::all_to_all_async(const void* send, void* recv, size_t count, DType dtype) {
  const std::vector<size_t> counts(static_cast<size_t>(size()), count);
  return all_to_all_v_async(send, counts, recv, counts, dtype);
}

WorkPtr Communicator::all_to_all_v_async(const void* send, const std::vector<size_t>& send_counts, void* recv,
                                         const std::vector<size_t>& recv_counts, DType dtype) {
  const int W = size(), me = rank();
  DS_CHECK_AS(CommError, static_cast<int>(send_counts.size()) == W && static_cast<int>(recv_counts.size()) == W,
              "[comm] all_to_all_v needs one count per rank ({}), got {} send and {} recv counts", W,
              send_counts.size(), recv_counts.size());
  int64_t sent = 0, send_total = 0, recv_total = 0;
  for (int r = 0; r < W; ++r) {
    const int64_t s = checked_bytes("all_to_all_v", send_counts[r], dtype);
    send_total += s;
    recv_total += checked_bytes("all_to_all_v", recv_counts[r], dtype);
    if (r != me) sent += s;
  }
  check_buffer("all_to_all_v", "send", send, send_total, dtype);
  check_buffer("all_to_all_v", "recv", recv, recv_total, dtype);
  WorkPtr w = do_all_to_all_v(send, send_counts, recv, recv_counts, dtype);
  record(Collective::all_to_all, sent, send_total);
  return w;
}

WorkPtr Communicator::send_async(const void* data, size_t count, DType dtype, int peer, int tag) {
  const int64_t n = checked_bytes("send", count, dtype);
  check_rank("send", "peer", peer, size());
  DS_CHECK_AS(CommError, tag >= 0, "[comm] send to rank {}: tag must be >= 0, got {}", peer, tag);
  check_buffer("send", "data", data, n, dtype);
  WorkPtr w = do_send(data, count, dtype, peer, tag);
  record(Collective::send, n, n);
  return w;
}

WorkPtr Communicator::recv_async(void* data, size_t count, DType dtype, int peer, int tag) {
  const int64_t n = checked_bytes("recv", count, dtype);
  check_rank("recv", "peer", peer, size());
  DS_CHECK_AS(CommError, tag >= 0, "[comm] recv from rank {}: tag must be >= 0, got {}", peer, tag);
  check_buffer("recv", "data", data, n, dtype);
  WorkPtr w = do_recv(data, count, dtype, peer, tag);
  record(Collective::recv, 0, n);
  return w;
}

WorkPtr Communicator::barrier_async() {
  WorkPtr w = do_barrier();
  record(Collective::barrier, 0, 0);
  return w;
}

namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() : Communicator(/*counts_ring_bytes=*/false) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    check_usable("split");
    if (color < 0) return nullptr;
    return std::make_unique<SelfCommunicator>();
  }
  void abort(const std::string& reason) noexcept override {
    if (abort_reason_.empty()) {
      try {
        abort_reason_ = reason.empty() ? std::string("(no reason given)") : reason;
      } catch (...) {
      }
    }
  }

 protected:
  WorkPtr do_all_reduce(void*, size_t, DType, ReduceOp) override { return done("all_reduce"); }
  WorkPtr do_reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp) override {
    check_usable("reduce_scatter");
    copy(recv, send, count * dtype_size(dtype));
    return done("reduce_scatter");
  }
  WorkPtr do_all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    check_usable("all_gather");
    copy(recv, send, count * dtype_size(dtype));
    return done("all_gather");
  }
  WorkPtr do_broadcast(void*, size_t, DType, int) override { return done("broadcast"); }
  WorkPtr do_all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                          const std::vector<size_t>& recv_counts, DType dtype) override {
    check_usable("all_to_all");
    DS_CHECK_AS(CommError, send_counts[0] == recv_counts[0],
                "[comm] all_to_all_v: rank 0 sends {} elements to itself but expects to receive {}", send_counts[0],
                recv_counts[0]);
    copy(recv, send, send_counts[0] * dtype_size(dtype));
    return done("all_to_all");
  }
  WorkPtr do_send(const void*, size_t, DType, int peer, int) override {
    DS_THROW(CommError, "[comm] send to rank {} in a world of 1: a single process has no peer to send to", peer);
  }
  WorkPtr do_recv(void*, size_t, DType, int peer, int) override {
    DS_THROW(CommError, "[comm] recv from rank {} in a world of 1: a single process has no peer", peer);
  }
  WorkPtr do_barrier() override { return done("barrier"); }

 private:
  static void copy(void* dst, const void* src, size_t n) {
    if (dst != src && n > 0) std::memmove(dst, src, n);
  }
  WorkPtr done(const char* what) const {
    check_usable(what);
    static const WorkPtr kDone = std::make_shared<DoneWork>();
    return kDone;
  }
  void check_usable(const char* what) const {
    DS_CHECK_AS(CommError, abort_reason_.empty(), "[comm] rank 0 aborted: {} ({} after abort)", abort_reason_, what);
  }

  std::string abort_reason_;
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

}  // namespace ds::comm
