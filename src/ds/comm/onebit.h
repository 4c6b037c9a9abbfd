// OneBitAllReduce: DeepSpeed's error-compensated 1-bit all-reduce (runtime/comm/nccl.py compressed_allreduce),
// which 1-bit Adam and 0/1 Adam use in place of the gradient all-reduce (Note [1-bit all-reduce]).
//
// Note [1-bit all-reduce]
// Each tensor t of n_t elements is padded with zeros to P_t, a multiple of W * lcm(W, 8) (DeepSpeed's divider), so
// it splits into W server chunks of c_t = P_t / W elements, each a whole number of bytes of signs. One call
// reduces every tensor, each with its own scales, as DeepSpeed's one call per parameter does, in two collectives:
//   1. worker: b = x + worker_error; per scale block, scale = ||b_block||_2 / sqrt(len); worker_error = b -
//      scale * sign(b); the signs packed 8 to a byte (kernels.h onebit_compress; sign(0) = +1).
//   2. all_to_all: rank r receives from every rank one message for its chunk r of every tensor: the scales of
//      those chunks' blocks, then their signs.
//   3. server, for its chunk: s = sum_w scale_w / W * sign_w + server_error, compressed again the same way.
//   4. all_gather of the servers' messages; every rank decompresses chunk w of tensor t from server w's message,
//      and the first n_t elements replace x.
// Scale blocks: with scale_block 0 they are DeepSpeed's: the worker's scale covers its whole tensor, the server's
// its chunk. Otherwise every chunk is compressed in blocks of scale_block elements, each with its own scale, in
// the worker and in the server. The compressed optimizers use 256: with one scale per tensor, the rows of an
// embedding that the batches rarely touch (small momentum, small variance) receive the tensor's typical
// magnitude each step, divided by their small sqrt(v); GPT-2's tied embedding then diverges within a hundred steps
// of the freeze (docs/compression.md). 32 more bits per 256 signs cost 1/8 more bytes.
// Bytes sent per rank: (P/8 + 4 S)(W-1)/W in each exchange, S the scales per rank's chunks, against 2 * 4P(W-1)/W
// for an fp32 all-reduce: about 1/28 of it with blocks of 256, 1/32 with DeepSpeed's scales. The errors (P and P/W
// floats, `optimizer` memory) carry what compression dropped into the next call; they belong to this rank and this
// world size, so a checkpoint does not keep them (DeepSpeed resets them on load too). With one rank there is
// nothing to exchange and run() leaves the buffer as it is (DeepSpeed skips the call).
#pragma once

#include <cstdint>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"

namespace ds::comm {

class OneBitAllReduce {
 public:
  // `sizes`: the elements of each tensor reduced together, in buffer order. `scale_block`: elements per scale, a
  // multiple of 8, or 0 for DeepSpeed's scales (Note [1-bit all-reduce]).
  OneBitAllReduce(Communicator& comm, const std::vector<int64_t>& sizes, int64_t scale_block = 0);

  // The W-multiple each tensor is padded to: W * lcm(W, 8).
  static int64_t padding_multiple(int world);
  int64_t message_bytes() const { return message_; }  // what each rank sends each rank, in each exchange

  // Replaces buffer (numel() floats: the tensors one after another) with its compressed average over the ranks.
  // A collective over comm: every rank calls it with the same sizes.
  void run(float* buffer);
  // Zeroes both errors (0/1 Adam does when it moves from compressing gradients to compressing momentum).
  void reset_errors();

 private:
  struct Segment {
    int64_t offset = 0;  // in the caller's buffer
    int64_t numel = 0, padded = 0, chunk = 0;
    int64_t padded_offset = 0;  // in the padded (worker) layout
    int64_t chunk_offset = 0;   // in a chunk layout (sum of the earlier chunks): the server's buffers, a message's bits
    int64_t scale_offset = 0;   // in a message's scales (sum of the earlier tensors' scales per chunk)
    int64_t scales = 0;         // scales per chunk
    int64_t block = 0;          // elements per scale within a chunk (the server's; the worker's with blocks)
  };
  float* scales_of(uint8_t* message) const { return reinterpret_cast<float*>(message); }
  uint8_t* bits_of(uint8_t* message) const { return message + 4 * scale_count_; }

  Communicator& comm_;
  const int64_t scale_block_;
  std::vector<Segment> segments_;
  int64_t numel_ = 0, padded_ = 0, chunks_ = 0;  // chunks_: sum of the chunks, padded_ / W
  int64_t scale_count_ = 0, message_ = 0;        // scales per message, bytes per message
  Tensor worker_error_, server_error_;           // fp32 [padded_], [chunks_]
  Tensor work_, server_sum_;                     // fp32 staging [padded_], [chunks_]
  Tensor worker_bits_;                           // u8 [padded_ / 8]: a whole tensor's signs (DeepSpeed's scales)
  Tensor send_, recv_, server_message_, gathered_;  // u8 messages: W, W, 1 and W of them
};

}  // namespace ds::comm
