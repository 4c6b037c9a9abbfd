// ZeRO++'s quantized collectives (Note [Quantized collectives]): the stage-3 weight all-gather in int8 blocks
// (zero_quantized_weights, qwZ) and the gradient reduce-scatter as an all-to-all of int4 blocks, dequantized and
// summed in fp32 (zero_quantized_gradients, qgZ). Both take and give buffers in the storage dtype (f32, bf16, f16),
// as the plain collectives they replace, and return a Work: its wait() completes the exchange and dequantizes.
//
// Note [Quantized collectives]
// A message is one rank's chunk of n elements quantized in blocks (kernels.h quantize_blocks: symmetric, one fp32
// scale per block): the scales, then the n (8 bits) or ceil(n/2) (4 bits) bytes of values, padded to a multiple of
// 4 bytes so that every message's scales are aligned; u8 bytes on the wire.
//   all-gather (qwZ, 8 bits): each rank quantizes its chunk, the messages are all-gathered, and every rank
//     dequantizes all of them, its own included, so every rank computes with the same weights.
//   reduce-scatter (qgZ, 4 bits): each rank quantizes the block it sends to each other rank; an all-to-all
//     delivers them; each rank adds the dequantized blocks of the others to its own block, kept exact, in fp32
//     and in rank order, and rounds the sum once into the storage dtype.
// Bytes per element on the wire: 1 + 4/block for qwZ (4 for an fp32 all-gather, 2 for 16 bits) and 1/2 + 4/block for
// qgZ. DeepSpeed's qgZ goes through the node first (an intra-node all-to-all, then an inter-node one); here the one
// all-to-all runs over the data-parallel group.
#pragma once

#include <cstdint>

#include "ds/comm/communicator.h"

namespace ds::zero {

struct QuantizedFormat {
  int bits = 8;          // 8 or 4
  int64_t block = 256;   // elements per scale
  int64_t blocks(int64_t n) const { return (n + block - 1) / block; }
  int64_t value_bytes(int64_t n) const { return bits == 8 ? n : (n + 1) / 2; }
  // Bytes of one message holding n elements.
  int64_t message_bytes(int64_t n) const { return (4 * blocks(n) + value_bytes(n) + 3) / 4 * 4; }
};

// The formats ZeRO++ uses: int8 weights in blocks of 256 (qwZ), int4 gradients in blocks of 128 (qgZ).
inline constexpr QuantizedFormat kQuantizedWeights{8, 256};
inline constexpr QuantizedFormat kQuantizedGradients{4, 128};

// `send` (count elements of dtype) from every rank into `recv` (size() x count, rank order).
comm::WorkPtr quantized_all_gather_async(comm::Communicator& comm, const void* send, void* recv, size_t count,
                                         DType dtype, const QuantizedFormat& format);
// `data` holds size() blocks of count elements (dtype); when the Work is waited for, this rank's block holds the sum
// of every rank's block for it (the others' dequantized). The other blocks are left as they were.
comm::WorkPtr quantized_reduce_scatter_async(comm::Communicator& comm, void* data, size_t count, DType dtype,
                                             const QuantizedFormat& format);

}  // namespace ds::zero
