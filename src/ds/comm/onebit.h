// OneBitAllReduce: DeepSpeed's error-compensated 1-bit all-reduce (runtime/comm/nccl.py compressed_allreduce),
// which 1-bit Adam and 0/1 Adam use in place of the gradient all-reduce (Note [1-bit all-reduce]).
//
// Note [1-bit all-reduce]
// Each tensor t of n_t elements is padded with zeros to P_t, a multiple of W * lcm(W, 8) (DeepSpeed's divider), so
// it splits into W server chunks of c_t = P_t / W elements, each a whole number of bytes of signs. One call
// reduces every tensor, each with its own scales, as DeepSpeed's one call per parameter does, in four collectives:
//   1. worker: b = x + worker_error; scale_t = ||b_t||_2 / sqrt(P_t); worker_error = b - scale_t * sign(b); the
//      signs packed 8 to a byte (kernels.h onebit_compress; sign(0) = +1).
//   2. all_to_all of the signs: rank r receives chunk r of every tensor from every rank (block r of the send
//      buffer is chunk r of tensor 0, of tensor 1, ...); all_gather of the W x T worker scales (fp32).
//   3. server, for its chunk: s = sum_w scale_{w,t} / W * sign_w + server_error; scale'_t = ||s||_2 / sqrt(c_t);
//      server_error = s - scale'_t * sign(s); signs packed again.
//   4. all_gather of the server signs and of the server scales; every rank decompresses chunk w of tensor t as
//      scale'_{w,t} * sign, and the first n_t elements replace x.
// Bytes sent per rank: (P/8)(W-1)/W in each of the sign exchanges, 4T(W-1) bytes of scales in each gather, against
// 2 * 4P(W-1)/W for an fp32 all-reduce: 1/32 of it, plus the scales. The errors (P and P/W floats, `optimizer`
// memory) carry what compression dropped into the next call; they belong to this rank and this world size, so a
// checkpoint does not keep them (DeepSpeed resets them on load too). With one rank there is nothing to exchange
// and run() leaves the buffer as it is (DeepSpeed skips the call).
#pragma once

#include <cstdint>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"

namespace ds::comm {

class OneBitAllReduce {
 public:
  // `sizes`: the elements of each tensor reduced together, in buffer order.
  OneBitAllReduce(Communicator& comm, const std::vector<int64_t>& sizes);

  // The W-multiple each tensor is padded to: W * lcm(W, 8).
  static int64_t padding_multiple(int world);
  int64_t numel() const { return numel_; }         // the buffer's elements (sum of sizes)
  int64_t padded_numel() const { return padded_; }  // sum of the padded sizes

  // Replaces buffer (numel() floats: the tensors one after another) with its compressed average over the ranks.
  // A collective over comm: every rank calls it with the same sizes.
  void run(float* buffer);
  // Zeroes both errors (0/1 Adam does when it moves from compressing gradients to compressing momentum).
  void reset_errors();
  const Tensor& worker_error() const { return worker_error_; }
  const Tensor& server_error() const { return server_error_; }

 private:
  struct Segment {
    int64_t offset = 0;  // in the caller's buffer
    int64_t numel = 0, padded = 0, chunk = 0;
    int64_t padded_offset = 0;  // in the padded (worker) layout
    int64_t chunk_offset = 0;   // in this rank's server chunk layout (sum of the earlier chunks)
  };
  Communicator& comm_;
  std::vector<Segment> segments_;
  int64_t numel_ = 0, padded_ = 0, chunks_ = 0;  // chunks_: sum of the chunks, padded_ / W
  Tensor worker_error_, server_error_;           // fp32 [padded_], [chunks_]
  Tensor work_, server_sum_;                     // fp32 staging [padded_], [chunks_]
  Tensor worker_bits_, send_bits_, recv_bits_;   // u8 [padded_ / 8] each
  Tensor server_bits_, gathered_bits_;           // u8 [chunks_ / 8], [padded_ / 8]
  std::vector<float> scales_, all_scales_, server_scales_, all_server_scales_;
};

}  // namespace ds::comm
