// The CUDA inference forward (cuda_gpt.h). One stream; per pass one host-to-device copy of the metadata, the
// layer kernels and cuBLAS GEMMs, one device-to-host copy of the logits.
// Napkin for a pass of N tokens of GPT-2 124M on an H100-class GPU: the GEMMs are 0.25 GFLOP a token in fp32
// (about 50 TFLOP/s without tensor cores: 5 us a token), a decode reads the 0.5 GB of weights once (about
// 0.15 ms at 3.5 TB/s), so up to a few tens of tokens ride on a decode pass for free, and 147 launches a pass
// (8 kernels and 4 GEMMs per layer, the embedding, ln_f and the head) cost a few microseconds each.
// Attention, a decode at position P: 2 * P * HS * 4 bytes of K and V per head and layer (GPT-2 124M at P = 614:
// 0.3 MB per head, 3.8 MB per layer), read once; 12 blocks per layer leave most SMs idle, so a single decode is
// bound by the latency of its blocks' loops (measured: 1.69 ms a decode pass at that position on an H200).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "ds/core/error.h"
#include "ds/inference/cuda/cuda_gpt.h"
#include "ds/kernels/cuda/cuda_check.h"

namespace ds::inference::cuda_impl {
namespace {

constexpr int kRowThreads = 256;   // layernorm, embedding, KV append: one block per row
constexpr int kAttnThreads = 256;  // attention: one block per (token, head)
constexpr int kMaxLaneChannels = 8;  // a lane's channels of a head: head sizes up to 256
constexpr float kLnEps = 1e-5f;    // as cpu::layernorm_forward

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Every thread of the block gets the result. red holds 32 floats; blockDim.x is a multiple of 32.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : 0.0f;
  return warp_sum(v);
}
__device__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : -INFINITY;
  return warp_max(v);
}

// x[i] = wte[ids[i]] + wpe[pos[i]]
__global__ void embed_kernel(float* x, const int32_t* ids, const int32_t* pos, const float* wte, const float* wpe,
                             int C) {
  const int64_t i = blockIdx.x;
  const float* te = wte + int64_t(ids[i]) * C;
  const float* pe = wpe + int64_t(pos[i]) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) x[i * C + c] = te[c] + pe[c];
}

// out[r] = layernorm(inp[rows ? rows[r] : r]) (biased variance, as the CPU kernel).
__global__ void layernorm_kernel(float* out, const float* inp, const int32_t* rows, const float* w, const float* b,
                                 int C) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* x = inp + int64_t(rows ? rows[r] : r) * C;
  float* o = out + r * C;
  float s = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float mean = block_sum(s, red) / C;
  float v = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[c] - mean;
    v += d * d;
  }
  const float rstd = 1.0f / sqrtf(block_sum(v, red) / C + kLnEps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

__global__ void bias_kernel(float* y, const float* b, int64_t n, int M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % M];
}

// GPT-2's tanh GELU on y + b.
__global__ void bias_gelu_kernel(float* y, const float* b, int64_t n, int M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = y[i] + b[i % M];
    y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  }
}

// x += y + b (the residual after a projection).
__global__ void bias_residual_kernel(float* x, const float* y, const float* b, int64_t n, int C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i] + b[i % C];
}

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
  float acc[kMaxLaneChannels];
#pragma unroll
  for (int j = 0; j < kMaxLaneChannels; ++j) acc[j] = 0;
  for (int32_t t = warp; t <= p; t += warps) {
    const float w = sc[t];
    const float* v = slot_of(kv, table, t, bs, C) + C + h * HS;
#pragma unroll
    for (int j = 0; j < kMaxLaneChannels; ++j) {
      const int d = lane + 32 * j;
      if (d < HS) acc[j] += w * v[d];
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxLaneChannels; ++j) {
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

// Dynamic shared memory of paged_attention_kernel for positions 0..positions-1: q, the scores, the warps' partial
// outputs. The kernel's static part (32 floats) comes on top.
size_t attention_smem_bytes(int HS, int positions) {
  return sizeof(float) * (size_t(HS) + size_t(positions) + size_t(kAttnThreads / 32) * size_t(HS));
}

int elementwise_blocks(int64_t n) { return static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096)); }

}  // namespace

struct CudaGpt::State {
  GptShape shape;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<void*> allocations;
  int64_t weight_bytes = 0, kv_bytes = 0;
  size_t attn_smem_limit = 0;

  struct Layer {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc_w, *fc_b, *fc2_w, *fc2_b;
  };
  float *wte = nullptr, *wpe = nullptr, *lnf_w = nullptr, *lnf_b = nullptr;
  std::vector<Layer> layers;
  float* kv = nullptr;  // [n_layer, kv_blocks, kv_block_size, 2, C]
  float *x = nullptr, *h = nullptr, *qkv = nullptr, *att = nullptr, *mlp = nullptr, *logits = nullptr;
  // Metadata: a pinned host buffer and its device twin, grown on demand.
  float* logits_host = nullptr;  // pinned [max_seqs, V]: what forward returns
  int32_t* meta_host = nullptr;
  int32_t* meta_dev = nullptr;
  size_t meta_capacity = 0;  // int32 entries

  float* alloc(int64_t floats, const char* what) {
    void* p = nullptr;
    const size_t bytes = sizeof(float) * static_cast<size_t>(floats);
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      DS_THROW(OutOfMemory, "[cuda] cannot allocate {} MiB of GPU memory for {} ({} MiB free of {}); lower "
               "--kv-memory or --token-budget, or serve a smaller model", bytes >> 20, what, free >> 20, total >> 20);
    }
    DS_CUDA_CHECK(err);
    allocations.push_back(p);
    return static_cast<float*>(p);
  }
  float* upload(const float* host, int64_t floats, const char* what) {
    float* d = alloc(floats, what);
    DS_CUDA_CHECK(cudaMemcpy(d, host, sizeof(float) * static_cast<size_t>(floats), cudaMemcpyHostToDevice));
    weight_bytes += sizeof(float) * floats;
    return d;
  }
  void reserve_meta(size_t entries) {
    if (entries <= meta_capacity) return;
    DS_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (meta_host) cudaFreeHost(meta_host);
    if (meta_dev) cudaFree(meta_dev);
    const size_t cap = std::max(entries, 2 * meta_capacity);  // grows geometrically as block tables do
    meta_host = nullptr;
    meta_dev = nullptr;
    meta_capacity = 0;  // until both allocations have succeeded
    DS_CUDA_CHECK(cudaMallocHost(&meta_host, cap * sizeof(int32_t)));
    DS_CUDA_CHECK(cudaMalloc(&meta_dev, cap * sizeof(int32_t)));
    meta_capacity = cap;
  }
  // Queues one pass whose metadata (`entries` int32) is in meta_host, and waits for its logits.
  void enqueue_pass(const PassMeta& m, size_t entries);
  // out[rows, M] = in[rows, K] @ w[K, M], all row-major: column-major out^T = w^T in^T.
  void gemm(float* out, const float* in, const float* w, int rows, int K, int M) {
    const float one = 1.0f, zero = 0.0f;
    DS_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, M, rows, K, &one, w, M, in, K, &zero, out, M));
  }
};

CudaGpt::CudaGpt(const GptShape& shape, const GptWeights& w) : s_(new State) {
  State& s = *s_;
  s.shape = shape;
  try {
    int count = 0;
    const cudaError_t found = cudaGetDeviceCount(&count);
    DS_CHECK_AS(DeviceError, found == cudaSuccess && count > 0, "[cuda] no usable GPU: cudaGetDeviceCount {}; check "
                "the NVIDIA driver (nvidia-smi), or serve with --device cpu",
                found == cudaSuccess ? std::string("found none") : std::string(cudaGetErrorString(found)));
    DS_CHECK_AS(DeviceError, shape.device >= 0 && shape.device < count, "[cuda] asked for GPU {}, but this machine "
                "has {} visible (cuda:0 to cuda:{}); pick one of those, or check CUDA_VISIBLE_DEVICES", shape.device,
                count, count - 1);
    DS_CUDA_CHECK(cudaSetDevice(shape.device));
    DS_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    DS_CUBLAS_CHECK(cublasCreate(&s.blas));
    DS_CUBLAS_CHECK(cublasSetStream(s.blas, s.stream));
    // CUBLAS_DEFAULT_MATH: sgemm stays fp32 (no TF32), as the CPU forward.

    const int C = shape.n_embd, V = shape.vocab, L = shape.n_layer;
    DS_CHECK_AS(ConfigError, shape.n_head > 0 && C % shape.n_head == 0 && C / shape.n_head <= 32 * kMaxLaneChannels,
                "[cuda] n_embd {} over {} heads gives a head size of {}; the CUDA forward needs one that divides "
                "n_embd and is at most {}: serve this model with --device cpu", C, shape.n_head,
                shape.n_head > 0 ? C / shape.n_head : 0, 32 * kMaxLaneChannels);
    const int64_t CC = int64_t(C) * C;
    s.wte = s.upload(w.wte, int64_t(V) * C, "wte");
    s.wpe = s.upload(w.wpe, int64_t(shape.context) * C, "wpe");
    s.lnf_w = s.upload(w.lnf_w, C, "ln_f");
    s.lnf_b = s.upload(w.lnf_b, C, "ln_f");
    DS_ASSERT(static_cast<int>(w.layers.size()) == L, "{} layer weight sets for {} layers", w.layers.size(), L);
    for (const GptLayerWeights& lw : w.layers) {
      State::Layer d;
      d.ln1_w = s.upload(lw.ln1_w, C, "ln_1");
      d.ln1_b = s.upload(lw.ln1_b, C, "ln_1");
      d.qkv_w = s.upload(lw.qkv_w, 3 * CC, "c_attn");
      d.qkv_b = s.upload(lw.qkv_b, 3 * C, "c_attn");
      d.proj_w = s.upload(lw.proj_w, CC, "attn.c_proj");
      d.proj_b = s.upload(lw.proj_b, C, "attn.c_proj");
      d.ln2_w = s.upload(lw.ln2_w, C, "ln_2");
      d.ln2_b = s.upload(lw.ln2_b, C, "ln_2");
      d.fc_w = s.upload(lw.fc_w, 4 * CC, "c_fc");
      d.fc_b = s.upload(lw.fc_b, 4 * C, "c_fc");
      d.fc2_w = s.upload(lw.fc2_w, 4 * CC, "mlp.c_proj");
      d.fc2_b = s.upload(lw.fc2_b, C, "mlp.c_proj");
      s.layers.push_back(d);
    }
    const int64_t kv_floats = int64_t(L) * shape.kv_blocks * shape.kv_block_size * 2 * C;
    s.kv = s.alloc(kv_floats, "the KV cache");
    s.kv_bytes = kv_floats * int64_t(sizeof(float));
    const int64_t N = shape.max_tokens;
    s.x = s.alloc(N * C, "activations");
    s.h = s.alloc(N * C, "activations");
    s.att = s.alloc(N * C, "activations");
    s.qkv = s.alloc(N * 3 * C, "activations");
    s.mlp = s.alloc(N * 4 * C, "activations");
    s.logits = s.alloc(int64_t(shape.max_seqs) * V, "logits");
    DS_CUDA_CHECK(cudaMallocHost(&s.logits_host, sizeof(float) * size_t(shape.max_seqs) * size_t(V)));

    // Attention's shared memory grows with the context; above 48 KiB in all a kernel must opt in.
    const int HS = C / shape.n_head;
    const size_t smem = attention_smem_bytes(HS, shape.context);
    int optin = 0;
    DS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, shape.device));
    DS_CHECK_AS(DeviceError, smem + 32 * sizeof(float) <= static_cast<size_t>(optin), "[cuda] a context of {} "
                "tokens needs {} KiB of shared memory per attention block; this GPU gives {} KiB: serve a model with "
                "a shorter context, or use --device cpu", shape.context, smem >> 10, optin >> 10);
    DS_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
    s.attn_smem_limit = smem;
    DS_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (...) {
    release(s_);
    throw;
  }
}

void CudaGpt::release(State* s) noexcept {
  if (s->stream) {
    cudaSetDevice(s->shape.device);  // cuBLAS and the stream belong to that device
    cudaStreamSynchronize(s->stream);
  }
  for (void* p : s->allocations) cudaFree(p);
  if (s->meta_host) cudaFreeHost(s->meta_host);
  if (s->logits_host) cudaFreeHost(s->logits_host);
  if (s->meta_dev) cudaFree(s->meta_dev);
  if (s->blas) cublasDestroy(s->blas);
  if (s->stream) cudaStreamDestroy(s->stream);
  delete s;
}

CudaGpt::~CudaGpt() { release(s_); }

int64_t CudaGpt::kv_bytes() const { return s_->kv_bytes; }
int64_t CudaGpt::weight_bytes() const { return s_->weight_bytes; }

std::string CudaGpt::device_name() const {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, s_->shape.device) != cudaSuccess) return "unknown GPU";
  return prop.name;
}

const float* CudaGpt::forward(const PassMeta& m) {
  State& s = *s_;
  const GptShape& g = s.shape;
  DS_CUDA_CHECK(cudaSetDevice(g.device));  // the calling thread's current device (the serving loop's thread)
  const int N = m.n_tokens, S = m.n_seqs, HS = g.n_embd / g.n_head;
  DS_ASSERT(N > 0 && N <= g.max_tokens && S > 0 && S <= g.max_seqs, "pass of {} tokens in {} sequences beyond the "
            "limits ({}, {})", N, S, g.max_tokens, g.max_seqs);
  DS_ASSERT(m.max_pos > 0 && m.max_pos <= g.context, "max_pos {} outside (0, {}]", m.max_pos, g.context);

  // One copy of the metadata: ids, pos, token_seq [N]; last_token, table_offset [S]; tables.
  const size_t smem = attention_smem_bytes(HS, m.max_pos);
  DS_ASSERT(smem <= s.attn_smem_limit, "attention shared memory {} beyond {}", smem, s.attn_smem_limit);
  const size_t entries = 3 * size_t(N) + 2 * size_t(S) + size_t(m.n_table_entries);
  s.reserve_meta(entries);  // the previous pass has synchronised: meta_host is free
  int32_t* hp = s.meta_host;
  auto put = [&hp](const int32_t* src, int n) {
    if (n > 0) std::memcpy(hp, src, sizeof(int32_t) * static_cast<size_t>(n));
    hp += n;
  };
  put(m.ids, N);
  put(m.pos, N);
  put(m.token_seq, N);
  put(m.last_token, S);
  put(m.table_offset, S);
  put(m.tables, m.n_table_entries);
  try {
    s.enqueue_pass(m, entries);
  } catch (...) {
    cudaStreamSynchronize(s.stream);  // nothing of this pass may still read meta_host or write the cache
    throw;
  }
  return s.logits_host;
}

void CudaGpt::State::enqueue_pass(const PassMeta& m, size_t entries) {
  State& s = *this;
  const GptShape& g = s.shape;
  const int N = m.n_tokens, S = m.n_seqs, C = g.n_embd, V = g.vocab, HS = C / g.n_head;
  const size_t smem = attention_smem_bytes(HS, m.max_pos);
  DS_CUDA_CHECK(cudaMemcpyAsync(s.meta_dev, s.meta_host, entries * sizeof(int32_t), cudaMemcpyHostToDevice, s.stream));
  const int32_t* ids = s.meta_dev;
  const int32_t* pos = ids + N;
  const int32_t* seq = pos + N;
  const int32_t* last = seq + N;
  const int32_t* toff = last + S;
  const int32_t* tables = toff + S;

  const int64_t NC = int64_t(N) * C;
  embed_kernel<<<N, kRowThreads, 0, s.stream>>>(s.x, ids, pos, s.wte, s.wpe, C);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  for (int l = 0; l < g.n_layer; ++l) {
    const State::Layer& w = s.layers[static_cast<size_t>(l)];
    float* kv = s.kv + int64_t(l) * g.kv_blocks * g.kv_block_size * 2 * C;
    layernorm_kernel<<<N, kRowThreads, 0, s.stream>>>(s.h, s.x, nullptr, w.ln1_w, w.ln1_b, C);
    s.gemm(s.qkv, s.h, w.qkv_w, N, C, 3 * C);
    bias_kernel<<<elementwise_blocks(3 * NC), 256, 0, s.stream>>>(s.qkv, w.qkv_b, 3 * NC, 3 * C);
    kv_append_kernel<<<N, kRowThreads, 0, s.stream>>>(kv, s.qkv, pos, seq, toff, tables, g.kv_block_size, C);
    paged_attention_kernel<<<dim3(N, g.n_head), kAttnThreads, smem, s.stream>>>(
        s.att, s.qkv, kv, pos, seq, toff, tables, g.kv_block_size, C, HS, m.max_pos, scale);
    s.gemm(s.h, s.att, w.proj_w, N, C, C);
    bias_residual_kernel<<<elementwise_blocks(NC), 256, 0, s.stream>>>(s.x, s.h, w.proj_b, NC, C);
    layernorm_kernel<<<N, kRowThreads, 0, s.stream>>>(s.h, s.x, nullptr, w.ln2_w, w.ln2_b, C);
    s.gemm(s.mlp, s.h, w.fc_w, N, C, 4 * C);
    bias_gelu_kernel<<<elementwise_blocks(4 * NC), 256, 0, s.stream>>>(s.mlp, w.fc_b, 4 * NC, 4 * C);
    s.gemm(s.h, s.mlp, w.fc2_w, N, 4 * C, C);
    bias_residual_kernel<<<elementwise_blocks(NC), 256, 0, s.stream>>>(s.x, s.h, w.fc2_b, NC, C);
  }
  // ln_f on each sequence's last new token, then logits[S, V] = h[S, C] @ wte^T.
  layernorm_kernel<<<S, kRowThreads, 0, s.stream>>>(s.h, s.x, last, s.lnf_w, s.lnf_b, C);
  const float one = 1.0f, zero = 0.0f;
  DS_CUBLAS_CHECK(cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, V, S, C, &one, s.wte, C, s.h, C, &zero, s.logits, V));
  DS_CUDA_CHECK(cudaGetLastError());
  DS_CUDA_CHECK(cudaMemcpyAsync(s.logits_host, s.logits, sizeof(float) * size_t(S) * V, cudaMemcpyDeviceToHost,
                             s.stream));
  DS_CUDA_CHECK(cudaStreamSynchronize(s.stream));
}

}  // namespace ds::inference::cuda_impl
