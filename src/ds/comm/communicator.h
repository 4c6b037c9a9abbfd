// Communicator: the collective-communication interface of DESIGN decision 3. Every collective has a blocking form
// and an asynchronous form returning a Work handle. The public collectives are not virtual: they check their
// arguments (clear CommErrors naming what was expected and what was found) and count the traffic here, once for
// every backend (Note [Traffic accounting]), then hand the call to the backend's protected do_* method. So a
// backend only moves bytes, and ZeRO's traffic can be measured against 2Ψ / 3Ψ whatever the backend.
// Backends: local (ranks are threads in one process: make_local_world), MPI (comm/mpi/, one rank per process), and
// the self communicator below; NCCL is to come.
// For such a device backend: buffers may be device buffers (each backend says which memory it takes; the CPU
// backends take host memory, and the checks here never dereference a buffer). A backend owns its stream(s): an
// async form enqueues the collective on the backend's stream and returns at once, and Work::wait() is where the
// caller's thread synchronises with it; a blocking form is the async form followed by wait().
//
// Note [Traffic accounting]
// Bytes "moved" by a rank are the bytes of payload that rank sends under the bandwidth-optimal ring algorithm:
//   all_reduce of n bytes: 2 * n * (W-1)/W   (reduce-scatter then all-gather)
//   reduce_scatter to n/W bytes per rank from n bytes: n * (W-1)/W
//   all_gather from n/W bytes per rank to n bytes: n * (W-1)/W
//   broadcast of n bytes: n (root) / 0 (others) ; all_to_all(v): the bytes sent to other ranks ; send: n.
// With this convention an all_reduce of a Ψ-element gradient counts 2Ψ(W-1)/W elements, which is what the ZeRO
// paper calls 2Ψ (its W-1/W factor rounded to 1). Stats keep both the raw payload (the caller's buffer: n for
// all_reduce, broadcast, send and recv; the n-byte input of reduce_scatter and output of all_gather; everything
// an all_to_all(v) sends, its own block included) and this ring count. Fractions round down (integer bytes).
// A call is counted once, when it is issued (an async call counts before it completes), and only if it was
// accepted: a call that fails its checks counts nothing. A communicator with no transport (the world of one
// from make_self_communicator) counts calls and payload but no ring bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ds/core/dtype.h"

namespace ds::comm {

enum class ReduceOp : uint8_t { sum, max, min };

enum class Collective : uint8_t {
  all_reduce,
  reduce_scatter,
  all_gather,
  broadcast,
  all_to_all,
  send,
  recv,
  barrier,
};
constexpr int kCollectiveCount = 8;
std::string_view collective_name(Collective c);
// The bytes a rank sends under the ring convention (Note [Traffic accounting]) for a collective naming n bytes:
// 2n(W-1)/W for all_reduce (n: the buffer), n(W-1)/W for reduce_scatter (n: its input) and all_gather (n: its
// output), n itself for the rest (the caller passes what this rank sends: 0 for a broadcast's receivers).
int64_t ring_bytes(Collective c, int64_t n, int world);

struct CommStats {
  int64_t calls[kCollectiveCount] = {};
  int64_t bytes[kCollectiveCount] = {};    // ring-convention bytes sent by this rank (Note [Traffic accounting])
  int64_t payload[kCollectiveCount] = {};  // raw payload: the bytes of the caller's buffer the call names
  int64_t total_bytes() const;
  int64_t total_payload() const;
  void reset();
  void record(Collective c, int64_t ring_bytes, int64_t payload_bytes);
};

// Completion handle of an asynchronous collective. wait() rethrows the collective's error, if any.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;  // true once complete (never throws; wait() reports errors)
};
using WorkPtr = std::shared_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In-place all-reduce of `count` elements of `dtype` (f32, i32, f16 and bf16; sum/max/min). 16-bit floats are
  // combined in fp32 and rounded to 16 bits (fold.h): once at the end by the local backend, at every hop of the
  // ring by the MPI backend (as NCCL does), so the two may differ in the last bit.
  WorkPtr all_reduce_async(void* data, size_t count, DType dtype, ReduceOp op = ReduceOp::sum);
  // `send` holds size()*count elements; rank r receives the reduction of block r into `recv` (count elements).
  // `recv` may be this rank's own block of `send` (in place).
  WorkPtr reduce_scatter_async(const void* send, void* recv, size_t count, DType dtype, ReduceOp op = ReduceOp::sum);
  // Each rank contributes `count` elements; `recv` receives size()*count elements ordered by rank. `send` may be
  // this rank's own block of `recv` (in place).
  WorkPtr all_gather_async(const void* send, void* recv, size_t count, DType dtype);
  WorkPtr broadcast_async(void* data, size_t count, DType dtype, int root);
  // Block r of `send` (`count` elements) goes to rank r; block r of `recv` comes from rank r.
  WorkPtr all_to_all_async(const void* send, void* recv, size_t count, DType dtype);
  // send_counts[r] elements go to rank r (contiguous in `send` in rank order); recv likewise.
  WorkPtr all_to_all_v_async(const void* send, const std::vector<size_t>& send_counts, void* recv,
                             const std::vector<size_t>& recv_counts, DType dtype);
  // Point-to-point, matched by (peer, tag) in issue order; tag >= 0.
  WorkPtr send_async(const void* data, size_t count, DType dtype, int peer, int tag);
  WorkPtr recv_async(void* data, size_t count, DType dtype, int peer, int tag);
  WorkPtr barrier_async();

  // Blocking forms: the async form, then wait().
  void all_reduce(void* data, size_t count, DType dtype, ReduceOp op = ReduceOp::sum) {
    all_reduce_async(data, count, dtype, op)->wait();
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(send, recv, count, dtype, op)->wait();
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) {
    all_gather_async(send, recv, count, dtype)->wait();
  }
  void broadcast(void* data, size_t count, DType dtype, int root) { broadcast_async(data, count, dtype, root)->wait(); }
  void all_to_all(const void* send, void* recv, size_t count, DType dtype) {
    all_to_all_async(send, recv, count, dtype)->wait();
  }
  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                    const std::vector<size_t>& recv_counts, DType dtype) {
    all_to_all_v_async(send, send_counts, recv, recv_counts, dtype)->wait();
  }
  void send(const void* data, size_t count, DType dtype, int peer, int tag) {
    send_async(data, count, dtype, peer, tag)->wait();
  }
  void recv(void* data, size_t count, DType dtype, int peer, int tag) {
    recv_async(data, count, dtype, peer, tag)->wait();
  }
  void barrier() { barrier_async()->wait(); }

  // Ranks with the same color form a new communicator, ordered by key then by old rank. Collective over this
  // communicator. A negative color (MPI_UNDEFINED) joins no group and gets nullptr.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends the job on every rank as fast as possible (no collective may hang after one rank aborts).
  virtual void abort(const std::string& reason) noexcept = 0;

  CommStats& stats() { return stats_; }
  const CommStats& stats() const { return stats_; }

 protected:
  // `counts_ring_bytes` false: a communicator with no transport (Note [Traffic accounting]).
  explicit Communicator(bool counts_ring_bytes = true) : counts_ring_bytes_(counts_ring_bytes) {}

  // The backend's side of each collective, called once its arguments passed the checks: buffers are non-null
  // wherever their count is non-zero, counts fit in memory, roots and peers are ranks, tags >= 0, and
  // all_to_all_v has one count per rank. Checks only a backend can make (a peer's matching call, MPI's int
  // counts) stay in the backend. A backend throws, or fails the Work, with a CommError.
  virtual WorkPtr do_all_reduce(void* data, size_t count, DType dtype, ReduceOp op) = 0;
  virtual WorkPtr do_reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) = 0;
  virtual WorkPtr do_all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
  virtual WorkPtr do_broadcast(void* data, size_t count, DType dtype, int root) = 0;
  virtual WorkPtr do_all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                                  const std::vector<size_t>& recv_counts, DType dtype) = 0;
  virtual WorkPtr do_send(const void* data, size_t count, DType dtype, int peer, int tag) = 0;
  virtual WorkPtr do_recv(void* data, size_t count, DType dtype, int peer, int tag) = 0;
  virtual WorkPtr do_barrier() = 0;

 private:
  void record(Collective c, int64_t ring_bytes, int64_t payload_bytes);

  CommStats stats_;
  bool counts_ring_bytes_;
};

// A communicator with one rank (no peers): collectives are copies; used for single-process runs.
std::unique_ptr<Communicator> make_self_communicator();

}  // namespace ds::comm
