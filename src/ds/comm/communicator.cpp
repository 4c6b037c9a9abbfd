// Communicator basics: collective names, CommStats, and the world of one (make_self_communicator).
// The self communicator runs every collective inline on the caller's thread and hands back an already-completed
// Work: with no peers there is nothing to overlap. It counts calls and payload but 0 ring bytes (W-1 = 0), and
// after abort() every call throws, as a real backend's would. Point-to-point has no peer and is an error.
#include "ds/comm/communicator.h"

#include <cstring>
#include <exception>

#include "ds/core/error.h"

namespace ds {

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

void CommStats::record(Collective c, int64_t ring_bytes, int64_t payload_bytes) {
  const auto i = static_cast<size_t>(c);
  calls[i] += 1;
  bytes[i] += ring_bytes;
  payload[i] += payload_bytes;
}

namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }

  static void check_reducible(const char* what, DType dtype) {
    DS_CHECK_AS(CommError, dtype == DType::f32 || dtype == DType::i32 || dtype == DType::f16 || dtype == DType::bf16,
                "[comm] {} supports f32, i32, f16 and bf16, got {}", what, dtype_name(dtype));
  }

  WorkPtr all_reduce_async(void* data, size_t count, DType dtype, ReduceOp op) override {
    check_usable("all_reduce");
    check_reducible("all_reduce", dtype);
    stats_.record(Collective::all_reduce, 0, bytes_of(count, dtype));
    return done();
  }
  WorkPtr reduce_scatter_async(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) override {
    check_usable("reduce_scatter");
    check_reducible("reduce_scatter", dtype);
    copy(recv, send, bytes_of(count, dtype));
    stats_.record(Collective::reduce_scatter, 0, bytes_of(count, dtype));
    return done();
  }
  WorkPtr all_gather_async(const void* send, void* recv, size_t count, DType dtype) override {
    check_usable("all_gather");
    copy(recv, send, bytes_of(count, dtype));
    stats_.record(Collective::all_gather, 0, bytes_of(count, dtype));
    return done();
  }
  WorkPtr broadcast_async(void* data, size_t count, DType dtype, int root) override {
    check_usable("broadcast");
    DS_CHECK_AS(CommError, root == 0, "[comm] broadcast root {} is outside the world of 1 (ranks 0..0)", root);
    stats_.record(Collective::broadcast, 0, bytes_of(count, dtype));
    return done();
  }
  WorkPtr all_to_all_v_async(const void* send, const std::vector<size_t>& send_counts, void* recv,
                             const std::vector<size_t>& recv_counts, DType dtype) override {
    check_usable("all_to_all");
    DS_CHECK_AS(CommError, send_counts.size() == 1 && recv_counts.size() == 1,
                "[comm] all_to_all_v needs one count per rank (1), got {} send and {} recv counts",
                send_counts.size(), recv_counts.size());
    DS_CHECK_AS(CommError, send_counts[0] == recv_counts[0],
                "[comm] all_to_all_v: rank 0 sends {} elements to itself but expects to receive {}",
                send_counts[0], recv_counts[0]);
    copy(recv, send, bytes_of(send_counts[0], dtype));
    stats_.record(Collective::all_to_all, 0, bytes_of(send_counts[0], dtype));
    return done();
  }
  WorkPtr send_async(const void*, size_t, DType, int peer, int) override {
    DS_THROW(CommError, "[comm] send to rank {} in a world of 1: a single process has no peer to send to", peer);
  }
  WorkPtr recv_async(void*, size_t, DType, int peer, int) override {
    DS_THROW(CommError, "[comm] recv from rank {} in a world of 1: a single process has no peer", peer);
  }
  void barrier() override {
    check_usable("barrier");
    stats_.record(Collective::barrier, 0, 0);
  }
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

 private:
  static int64_t bytes_of(size_t count, DType dtype) { return static_cast<int64_t>(count * dtype_size(dtype)); }
  static void copy(void* dst, const void* src, int64_t n) {
    if (dst != src && n > 0) std::memmove(dst, src, static_cast<size_t>(n));
  }
  static WorkPtr done() {
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

}  // namespace ds
