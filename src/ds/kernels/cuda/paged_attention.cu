// Paged attention on the GPU over the blocked KV cache: appending the new tokens' K and V to their slots, and each
// new token's attention over its sequence's positions.
// Napkin, a decode at position P: 2 * P * HS * 4 bytes of K and V per head and layer (GPT-2 124M at P = 614:
// 0.3 MB per head, 3.8 MB per layer), read once; 12 blocks per layer leave most SMs idle, so a single decode is
// bound by the latency of its blocks' loops (measured: 1.69 ms a decode pass at that position on an H200).
#include "ds/kernels/cuda/cuda_check.h"
#include "ds/kernels/cuda/kernels.h"
#include "ds/kernels/cuda/reduce.cuh"

namespace ds::cuda {
namespace {
constexpr int kRowThreads = 256;   // KV append: one block per token
constexpr int kAttnThreads = 256;  // attention: one block per (token, head)
constexpr int kLaneChannels = kMaxHeadSize / 32;  // a lane's channels of a head

__device__ const float* slot_of(const float* kv, const int32_t* table, int32_t t, int bs, int C) {
  return kv + (int64_t(table[t / bs]) * bs + t % bs) * 2 * C;
}

// The new tokens' K and V (qkv columns [C, 3C)) into their slots of this layer's cache.
__global__ void kv_append_kernel(float* kv, const float* qkv, const int32_t* pos, const int32_t* token_seq,
                                 const int32_t* table_offset, const int32_t* tables, int bs, int C) {
  const int64_t i = blockIdx.x;
  float* slot = const_cast<float*>(slot_of(kv, tables + table_offset[token_seq[i]], pos[i], bs, C));
  const float* src = qkv + i * 3 * C + C;
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) slot[c] = src[c];
}

// Block (token i, head h), 8 warps. Scores: a thread per position t <= pos[i], each a whole dot product over
// the head's channels (independent loads, many in flight: a decode at position 600 is 3 rounds of 256 threads).
// Softmax in shared memory. Values: warp w sums positions w, w + 8, ... with each lane holding channels lane,
// lane + 32, ... (coalesced reads of a slot's head), then the 8 partial sums are added. Shared memory:
// attention_smem_bytes(HS, max_pos).
__global__ void paged_attention_kernel(float* out, const float* qkv, const float* kv, const int32_t* pos,
                                       const int32_t* token_seq, const int32_t* table_offset, const int32_t* tables,
                                       int bs, int C, int HS, int max_pos, float scale) {
  extern __shared__ float sm[];
  __shared__ float red[32];
  float* q = sm;
  float* sc = q + HS;
  float* part = sc + max_pos;  // [warps][HS]
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int32_t p = pos[i];
  const int32_t* table = tables + table_offset[token_seq[i]];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;

  for (int d = tid; d < HS; d += blockDim.x) q[d] = qkv[i * 3 * C + h * HS + d];
  __syncthreads();
  for (int32_t t = tid; t <= p; t += blockDim.x) {
    const float* k = slot_of(kv, table, t, bs, C) + h * HS;
    float acc = 0;
    if ((HS & 3) == 0) {  // C and HS multiples of 4: slots and heads are 16-byte aligned
      for (int d = 0; d < HS; d += 4) {
        const float4 k4 = *reinterpret_cast<const float4*>(k + d);
        acc += q[d] * k4.x + q[d + 1] * k4.y + q[d + 2] * k4.z + q[d + 3] * k4.w;
      }
    } else {
      for (int d = 0; d < HS; ++d) acc += q[d] * k[d];
    }
    sc[t] = acc * scale;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int32_t t = tid; t <= p; t += blockDim.x) m = fmaxf(m, sc[t]);
  m = block_max(m, red);
  float sum = 0;
  for (int32_t t = tid; t <= p; t += blockDim.x) {
    const float e = expf(sc[t] - m);
    sc[t] = e;
    sum += e;
  }
  const float inv = 1.0f / block_sum(sum, red);  // block_sum's barriers also publish sc
  float acc[kLaneChannels];
#pragma unroll
  for (int j = 0; j < kLaneChannels; ++j) acc[j] = 0;
  for (int32_t t = warp; t <= p; t += warps) {
    const float w = sc[t];
    const float* v = slot_of(kv, table, t, bs, C) + C + h * HS;
#pragma unroll
    for (int j = 0; j < kLaneChannels; ++j) {
      const int d = lane + 32 * j;
      if (d < HS) acc[j] += w * v[d];
    }
  }
#pragma unroll
  for (int j = 0; j < kLaneChannels; ++j) {
    const int d = lane + 32 * j;
    if (d < HS) part[warp * HS + d] = acc[j];
  }
  __syncthreads();
  float* o = out + i * C + h * HS;
  for (int d = tid; d < HS; d += blockDim.x) {
    float total = 0;
    for (int w = 0; w < warps; ++w) total += part[w * HS + d];
    o[d] = total * inv;
  }
}

}  // namespace

// q, the scores, the warps' partial outputs; the kernel's static part (32 floats) comes on top.
size_t paged_attention_smem_bytes(int HS, int positions) {
  return sizeof(float) * (size_t(HS) + size_t(positions) + size_t(kAttnThreads / 32) * size_t(HS));
}

void paged_attention_reserve_smem(size_t bytes) {
  DS_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

void kv_append(float* kv, const float* qkv, const int32_t* pos, const int32_t* token_seq, const int32_t* table_offset,
               const int32_t* tables, int N, int block_size, int C, cudaStream_t stream) {
  kv_append_kernel<<<N, kRowThreads, 0, stream>>>(kv, qkv, pos, token_seq, table_offset, tables, block_size, C);
}

void paged_attention(float* out, const float* qkv, const float* kv, const int32_t* pos, const int32_t* token_seq,
                     const int32_t* table_offset, const int32_t* tables, int N, int NH, int block_size, int C,
                     int max_pos, float scale, size_t smem_bytes, cudaStream_t stream) {
  paged_attention_kernel<<<dim3(N, NH), kAttnThreads, smem_bytes, stream>>>(
      out, qkv, kv, pos, token_seq, table_offset, tables, block_size, C, C / NH, max_pos, scale);
}

}  // namespace ds::cuda
