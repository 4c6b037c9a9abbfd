// CUDA kernels of the inference forward, one file per op family (embedding.cu, layernorm.cu, elementwise.cu,
// paged_attention.cu), reached through these host launchers (the ops layer's are in launch.h): each queues its
// kernel on `stream` and returns (a launch failure surfaces at the caller's next cudaGetLastError). Pointers are
// device memory. C++17 (CUDA sources).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ds::cuda {

// x[i, :] = wte[ids[i], :] + wpe[pos[i], :] for N tokens of C channels.
void embed_tokens(float* x, const int32_t* ids, const int32_t* pos, const float* wte, const float* wpe, int N, int C,
                  cudaStream_t stream);

// out[r, :] = layernorm(inp[rows ? rows[r] : r, :]) * w + b for R rows (eps 1e-5, biased variance, as the CPU).
void layernorm_rows(float* out, const float* inp, const int32_t* rows, const float* w, const float* b, int R, int C,
                    cudaStream_t stream);

// Over n elements of a [n / M, M] matrix: y += b; y = gelu(y + b) (tanh approximation); x += y + b.
void add_bias(float* y, const float* b, int64_t n, int M, cudaStream_t stream);
void add_bias_gelu(float* y, const float* b, int64_t n, int M, cudaStream_t stream);
void add_bias_residual(float* x, const float* y, const float* b, int64_t n, int M, cudaStream_t stream);

// MoE serving (moe_rows.cu), rows of C floats: out[i] = x[index[i]] for n rows; x[s] += sum over j < k of
// weight[s*k + j] * rows[row[s*k + j]] (rows < 0 skipped); Residual-MoE's x[s] += moe[s] p0 + mlp[s] p1 with
// p = softmax(coef[s, 0:2]).
void gather_rows(float* out, const float* x, const int32_t* index, int64_t n, int C, cudaStream_t stream);
void combine_rows_add(float* x, const float* rows, const int32_t* row, const float* weight, int S, int k, int C,
                      cudaStream_t stream);
void moe_mix_residual(float* x, const float* moe, const float* mlp, const float* coef, int S, int C,
                      cudaStream_t stream);

// Paged attention over a blocked KV cache (the layout of inference/kv_cache.h: a slot is [2C] floats, K then V;
// slot t of a sequence is slot t % block_size of block tables[table_offset[seq]][t / block_size]).
inline constexpr int kMaxHeadSize = 256;  // a lane holds at most 8 channels of a head
// Dynamic shared memory of one attention block for positions 0..positions-1.
size_t paged_attention_smem_bytes(int HS, int positions);
// Lets the attention kernel use up to `bytes` of dynamic shared memory (above 48 KiB a kernel must opt in).
void paged_attention_reserve_smem(size_t bytes);
// The N new tokens' K and V (qkv columns [C, 3C)) into their slots of one layer's cache.
void kv_append(float* kv, const float* qkv, const int32_t* pos, const int32_t* token_seq, const int32_t* table_offset,
               const int32_t* tables, int N, int block_size, int C, cudaStream_t stream);
// out[i, head h] = softmax(q k^T * scale) v over positions 0..pos[i] of token i's sequence, for N tokens and NH
// heads; smem_bytes = paged_attention_smem_bytes(HS, max_pos) with max_pos > every pos.
void paged_attention(float* out, const float* qkv, const float* kv, const int32_t* pos, const int32_t* token_seq,
                     const int32_t* table_offset, const int32_t* tables, int N, int NH, int block_size, int C,
                     int max_pos, float scale, size_t smem_bytes, cudaStream_t stream);

}  // namespace ds::cuda
