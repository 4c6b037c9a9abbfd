// The CUDA inference forward (cuda_gpt.h). One stream; per pass one host-to-device copy of the metadata, the
// layer kernels and cuBLAS GEMMs, one device-to-host copy of the logits.
// Napkin for a pass of N tokens of GPT-2 124M on an H100-class GPU: the GEMMs are 0.25 GFLOP a token in fp32
// (about 50 TFLOP/s without tensor cores: 5 us a token), a decode reads the 0.5 GB of weights once (about
// 0.15 ms at 3.5 TB/s), so up to a few tens of tokens ride on a decode pass for free, and 147 launches a pass
// (8 kernels and 4 GEMMs per layer, the embedding, ln_f and the head) cost a few microseconds each.
// Attention's napkin is in kernels/cuda/paged_attention.cu. The kernels are kernels/cuda's (kernels.h); device
// memory goes through allocate_storage, so the rank's MemoryTracker counts it (weights as param, the KV cache as
// kv_cache, activations as activation) and the pinned host buffers as host workspace.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <tuple>

#include "ds/core/error.h"
#include "ds/core/memory.h"
#include "ds/inference/cuda/cuda_gpt.h"
#include "ds/inference/ragged_forward.h"
#include "ds/kernels/cuda/cuda_check.h"
#include "ds/kernels/cuda/kernels.h"

namespace ds::inference::cuda_impl {

struct CudaGpt::State {
  GptShape shape;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<std::shared_ptr<Storage>> allocations;  // device memory, counted by the rank's MemoryTracker
  std::shared_ptr<Storage> meta_storage;
  MemoryTracker* tracker = &current_tracker();       // for the pinned host buffers, allocated here by hand
  int64_t pinned_bytes = 0;
  int64_t weight_bytes = 0, kv_bytes = 0;
  size_t attn_smem_limit = 0;

  // The weights by gpt2_weight_slot, in the spec's layouts, with each matrix's [K, M] (wte: [V, C]).
  std::vector<float*> weights;
  std::vector<int> rows, cols;
  // An MoE model's gate, coefficient and expert weights by (layer, role, expert), with their [K, M].
  struct MoeWeight {
    float* data = nullptr;
    int K = 0, M = 0;
  };
  std::map<std::tuple<int, int, int>, MoeWeight> moe;
  // MoE passes: the gate logits (device, and pinned for the host's router), the route (pinned and device: the
  // grouped rows' tokens, the assignments' rows, then their weights), the grouped inputs and the experts' outputs.
  float *moe_logits = nullptr, *moe_logits_host = nullptr, *moe_in = nullptr, *moe_out = nullptr;
  int32_t *route_host = nullptr, *route_dev = nullptr;
  size_t route_capacity = 0, moe_logits_capacity = 0;  // route entries (int32 or float), logits floats
  MoeRoute route;
  float* kv = nullptr;  // [n_layer, kv_blocks, kv_block_size, 2, C]
  float *x = nullptr, *h = nullptr, *qkv = nullptr, *att = nullptr, *mlp = nullptr, *logits = nullptr;
  // Metadata: a pinned host buffer and its device twin, grown on demand.
  float* logits_host = nullptr;  // pinned [max_seqs, V]: what forward returns
  int32_t* meta_host = nullptr;
  int32_t* meta_dev = nullptr;
  size_t meta_capacity = 0;  // int32 entries

  float* alloc(int64_t floats, Category cat, const char* what) {
    const int64_t bytes = int64_t(sizeof(float)) * floats;
    try {
      allocations.push_back(allocate_storage(bytes, cat, Tier::device, Device::cuda(shape.device)));
    } catch (const OutOfMemory& e) {
      DS_THROW(OutOfMemory, "{} (for {}); lower --kv-memory or --token-budget, or serve a smaller model", e.what(),
               what);
    }
    return static_cast<float*>(allocations.back()->data());
  }
  // Pinned host memory, reported to the tracker as host workspace.
  template <typename T>
  T* alloc_pinned(size_t count) {
    const int64_t bytes = int64_t(sizeof(T) * count);
    tracker->on_alloc(Tier::host, Category::workspace, bytes);
    void* p = nullptr;
    const cudaError_t err = cudaMallocHost(&p, static_cast<size_t>(bytes));
    if (err != cudaSuccess) tracker->on_free(Tier::host, Category::workspace, bytes);
    DS_CUDA_CHECK(err);
    pinned_bytes += bytes;
    return static_cast<T*>(p);
  }
  void free_pinned(void* p, int64_t bytes) noexcept {
    if (!p) return;
    cudaFreeHost(p);
    tracker->on_free(Tier::host, Category::workspace, bytes);
    pinned_bytes -= bytes;
  }
  float* upload(const float* host, int64_t floats, const char* what) {
    float* d = alloc(floats, Category::param, what);
    DS_CUDA_CHECK(cudaMemcpy(d, host, sizeof(float) * static_cast<size_t>(floats), cudaMemcpyHostToDevice));
    weight_bytes += sizeof(float) * floats;
    return d;
  }
  void reserve_meta(size_t entries) {
    if (entries <= meta_capacity) return;
    DS_CUDA_CHECK(cudaStreamSynchronize(stream));
    free_pinned(meta_host, int64_t(meta_capacity * sizeof(int32_t)));
    meta_storage.reset();
    const size_t cap = std::max(entries, 2 * meta_capacity);  // grows geometrically as block tables do
    meta_host = nullptr;
    meta_dev = nullptr;
    meta_capacity = 0;  // until both allocations have succeeded
    meta_host = alloc_pinned<int32_t>(cap);
    meta_capacity = cap;
    meta_storage = allocate_storage(int64_t(cap * sizeof(int32_t)), Category::workspace, Tier::device,
                                    Device::cuda(shape.device));
    meta_dev = static_cast<int32_t*>(meta_storage->data());
  }
  // Queues one pass whose metadata (`entries` int32) is in meta_host, and waits for its logits.
  void enqueue_pass(const PassMeta& m, size_t entries);
  // out[rows, M] = in[rows, K] @ w[K, M], all row-major: column-major out^T = w^T in^T.
  void gemm(float* out, const float* in, const float* w, int rows, int K, int M) {
    const float one = 1.0f, zero = 0.0f;
    DS_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, M, rows, K, &one, w, M, in, K, &zero, out, M));
  }
};

CudaGpt::CudaGpt(const GptShape& shape, const std::vector<nn::Gpt2Weight>& spec, const WeightReader& read)
    : s_(new State) {
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
    DS_CHECK_AS(ConfigError, shape.n_head > 0 && C % shape.n_head == 0 && C / shape.n_head <= ds::cuda::kMaxHeadSize,
                "[cuda] n_embd {} over {} heads gives a head size of {}; the CUDA forward needs one that divides "
                "n_embd and is at most {}: serve this model with --device cpu", C, shape.n_head,
                shape.n_head > 0 ? C / shape.n_head : 0, ds::cuda::kMaxHeadSize);
    s.weights.assign(static_cast<size_t>(nn::gpt2_weight_slots(L)), nullptr);
    s.rows.assign(s.weights.size(), 0);
    s.cols.assign(s.weights.size(), 0);
    std::vector<float> staging;  // one weight at a time
    size_t slotted = 0;
    for (const nn::Gpt2Weight& w : spec) {
      DS_ASSERT(w.layer < L, "weight {} of layer {} in a model of {} layers", w.name, w.layer, L);
      staging.resize(static_cast<size_t>(w.numel()));
      read(w, staging.data());
      float* data = s.upload(staging.data(), w.numel(), w.name.c_str());
      const int K = static_cast<int>(w.shape[0]), M = w.shape.size() > 1 ? static_cast<int>(w.shape[1]) : 1;
      if (static_cast<int>(w.role) >= static_cast<int>(nn::Gpt2Role::moe_gate_w)) {
        s.moe[{w.layer, static_cast<int>(w.role), w.expert}] = {data, K, M};
        continue;
      }
      const auto k = static_cast<size_t>(nn::gpt2_weight_slot(w.role, w.layer));
      s.weights[k] = data;
      s.rows[k] = K;
      s.cols[k] = M;
      ++slotted;
    }
    // Every slot is filled, but the MLP's of an MoE layer without Residual-MoE.
    size_t empty = 0;
    for (const float* p : s.weights) empty += p == nullptr;
    DS_ASSERT(slotted + empty == s.weights.size() && (shape.experts.empty() ? empty == 0 : true),
              "the weight spec left {} slot(s) of the CUDA model empty", empty);
    const int64_t kv_floats = int64_t(L) * shape.kv_blocks * shape.kv_block_size * 2 * C;
    s.kv = s.alloc(kv_floats, Category::kv_cache, "the KV cache");
    s.kv_bytes = kv_floats * int64_t(sizeof(float));
    const int64_t N = shape.max_tokens;
    s.x = s.alloc(N * C, Category::activation, "activations");
    s.h = s.alloc(N * C, Category::activation, "activations");
    s.att = s.alloc(N * C, Category::activation, "activations");
    s.qkv = s.alloc(N * 3 * C, Category::activation, "activations");
    s.mlp = s.alloc(N * 4 * C, Category::activation, "activations");
    s.logits = s.alloc(int64_t(shape.max_seqs) * V, Category::activation, "logits");
    s.logits_host = s.alloc_pinned<float>(size_t(shape.max_seqs) * size_t(V));
    if (!shape.experts.empty()) {
      // A token goes to an expert once, so a group holds at most N rows and all groups N·k.
      const int E = *std::max_element(shape.experts.begin(), shape.experts.end());
      const int64_t rows = N * shape.moe_k;
      s.moe_logits_capacity = size_t(N) * size_t(std::max(E, 2));
      s.moe_logits = s.alloc(int64_t(s.moe_logits_capacity), Category::activation, "MoE gate logits");
      s.moe_logits_host = s.alloc_pinned<float>(s.moe_logits_capacity);
      s.moe_in = s.alloc(rows * C, Category::activation, "MoE expert inputs");
      s.moe_out = s.alloc(rows * C, Category::activation, "MoE expert outputs");
      s.route_capacity = size_t(3 * rows);  // tokens, rows, weights
      s.route_host = s.alloc_pinned<int32_t>(s.route_capacity);
      s.route_dev = reinterpret_cast<int32_t*>(s.alloc(int64_t(s.route_capacity), Category::activation, "MoE route"));
    }

    // Attention's shared memory grows with the context; above 48 KiB in all a kernel must opt in.
    const int HS = C / shape.n_head;
    const size_t smem = ds::cuda::paged_attention_smem_bytes(HS, shape.context);
    int optin = 0;
    DS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, shape.device));
    DS_CHECK_AS(DeviceError, smem + 32 * sizeof(float) <= static_cast<size_t>(optin), "[cuda] a context of {} "
                "tokens needs {} KiB of shared memory per attention block; this GPU gives {} KiB: serve a model with "
                "a shorter context, or use --device cpu", shape.context, smem >> 10, optin >> 10);
    ds::cuda::paged_attention_reserve_smem(smem);
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
  s->allocations.clear();
  s->meta_storage.reset();
  s->free_pinned(s->meta_host, int64_t(s->meta_capacity * sizeof(int32_t)));
  s->free_pinned(s->logits_host, int64_t(sizeof(float)) * s->shape.max_seqs * s->shape.vocab);
  s->free_pinned(s->moe_logits_host, int64_t(sizeof(float) * s->moe_logits_capacity));
  s->free_pinned(s->route_host, int64_t(sizeof(int32_t) * s->route_capacity));
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
  const size_t smem = ds::cuda::paged_attention_smem_bytes(HS, m.max_pos);
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

// The CUDA step set of gpt2_ragged_forward (ragged_forward.h): the pass's buffers in device memory, the metadata
// (already on the device) as enqueue_pass lays it out, every step queued on the one stream.
struct CudaSteps {
  CudaGpt::State& s;
  const PassMeta& m;
  const int32_t *ids, *pos, *seq, *last, *toff, *tables;  // device
  size_t smem;
  int N, S, C;
  float scale;

  float* at(PassBuffer b) const {
    switch (b) {
      case PassBuffer::x: return s.x;
      case PassBuffer::h: return s.h;
      case PassBuffer::qkv: return s.qkv;
      case PassBuffer::att: return s.att;
      case PassBuffer::mlp: return s.mlp;
    }
    return nullptr;
  }
  size_t slot(nn::Gpt2Role r, int l) const { return static_cast<size_t>(nn::gpt2_weight_slot(r, l)); }
  const float* w(nn::Gpt2Role r, int l = -1) const { return s.weights[slot(r, l)]; }
  // out[N, M] = in @ W, W [K, M] of role r in layer l; returns M.
  int matmul(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role r) {
    const int K = s.rows[slot(r, l)], M = s.cols[slot(r, l)];
    s.gemm(at(out), at(in), w(r, l), N, K, M);
    return M;
  }

  void embed(PassBuffer out) {
    ds::cuda::embed_tokens(at(out), ids, pos, w(nn::Gpt2Role::wte), w(nn::Gpt2Role::wpe), N, C, s.stream);
  }
  void layernorm(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role wr, nn::Gpt2Role br) {
    ds::cuda::layernorm_rows(at(out), at(in), nullptr, w(wr, l), w(br, l), N, C, s.stream);
  }
  void linear(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role wr, nn::Gpt2Role br) {
    const int M = matmul(out, in, l, wr);
    ds::cuda::add_bias(at(out), w(br, l), int64_t(N) * M, M, s.stream);
  }
  void linear_gelu(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role wr, nn::Gpt2Role br) {
    const int M = matmul(out, in, l, wr);
    ds::cuda::add_bias_gelu(at(out), w(br, l), int64_t(N) * M, M, s.stream);
  }
  void linear_residual(PassBuffer x, PassBuffer in, PassBuffer tmp, int l, nn::Gpt2Role wr, nn::Gpt2Role br) {
    matmul(tmp, in, l, wr);
    ds::cuda::add_bias_residual(at(x), at(tmp), w(br, l), int64_t(N) * C, C, s.stream);
  }
  void attention(PassBuffer out, PassBuffer qkv, int l) {
    const GptShape& g = s.shape;
    float* kv = s.kv + int64_t(l) * g.kv_blocks * g.kv_block_size * 2 * C;
    ds::cuda::kv_append(kv, at(qkv), pos, seq, toff, tables, N, g.kv_block_size, C, s.stream);
    ds::cuda::paged_attention(at(out), at(qkv), kv, pos, seq, toff, tables, N, g.n_head, g.kv_block_size, C,
                              m.max_pos, scale, smem, s.stream);
  }
  int experts(int l) const { return s.shape.experts.empty() ? 0 : s.shape.experts[static_cast<size_t>(l)]; }
  const CudaGpt::State::MoeWeight& mw(nn::Gpt2Role r, int l, int e = -1) const {
    return s.moe.at({l, static_cast<int>(r), e});
  }
  // The MoE layer as the CPU forward runs it (Note [MoE serving] in model_runner.cpp): the gate's logits go to the
  // host, which routes (the stream waits), the route comes back, then a gather into expert groups, each expert's
  // two GEMMs over its rows, and the weighted sum into the residual stream (Residual-MoE: the mix with the MLP).
  void moe_residual(PassBuffer x, PassBuffer in, int l) {
    using R = nn::Gpt2Role;
    const int E = experts(l), k = s.shape.moe_k;
    const CudaGpt::State::MoeWeight& gate = mw(R::moe_gate_w, l);
    s.gemm(s.moe_logits, at(in), gate.data, N, gate.K, gate.M);
    DS_CUDA_CHECK(cudaMemcpyAsync(s.moe_logits_host, s.moe_logits, sizeof(float) * size_t(N) * E,
                                  cudaMemcpyDeviceToHost, s.stream));
    DS_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // also: the previous layer's route has been copied
    s.shape.route(l, s.moe_logits_host, N, s.route);
    const MoeRoute& r = s.route;
    const int64_t rows = r.offset.back(), A = int64_t(N) * k;
    DS_ASSERT(size_t(rows + 2 * A) <= s.route_capacity && r.row.size() == size_t(A), "MoE route of {} rows, {} "
              "assignments", rows, A);
    int32_t* host = s.route_host;
    std::memcpy(host, r.token.data(), sizeof(int32_t) * size_t(rows));
    std::memcpy(host + rows, r.row.data(), sizeof(int32_t) * size_t(A));
    std::memcpy(host + rows + A, r.weight.data(), sizeof(float) * size_t(A));
    DS_CUDA_CHECK(cudaMemcpyAsync(s.route_dev, host, sizeof(int32_t) * size_t(rows + 2 * A), cudaMemcpyHostToDevice,
                                  s.stream));
    const int32_t* token = s.route_dev;
    const int32_t* row = token + rows;
    const float* weight = reinterpret_cast<const float*>(row + A);
    ds::cuda::gather_rows(s.moe_in, at(in), token, rows, C, s.stream);
    for (int e = 0; e < E; ++e) {
      const int64_t first = r.offset[size_t(e)], n = r.offset[size_t(e) + 1] - first;
      if (n == 0) continue;
      const CudaGpt::State::MoeWeight &fc = mw(R::expert_fc_w, l, e), &fc2 = mw(R::expert_fc2_w, l, e);
      s.gemm(s.mlp, s.moe_in + first * C, fc.data, static_cast<int>(n), fc.K, fc.M);
      ds::cuda::add_bias_gelu(s.mlp, mw(R::expert_fc_b, l, e).data, n * fc.M, fc.M, s.stream);
      s.gemm(s.moe_out + first * C, s.mlp, fc2.data, static_cast<int>(n), fc2.K, fc2.M);
      ds::cuda::add_bias(s.moe_out + first * C, mw(R::expert_fc2_b, l, e).data, n * C, C, s.stream);
    }
    if (!s.shape.moe_residual) {
      ds::cuda::combine_rows_add(at(x), s.moe_out, row, weight, N, k, C, s.stream);
      return;
    }
    // Residual-MoE: the MoE output in att, the MLP's in qkv (both free at this point of the layer).
    DS_CUDA_CHECK(cudaMemsetAsync(s.att, 0, sizeof(float) * size_t(N) * C, s.stream));
    ds::cuda::combine_rows_add(s.att, s.moe_out, row, weight, N, k, C, s.stream);
    const int M = matmul(PassBuffer::mlp, in, l, R::fc_w);
    ds::cuda::add_bias_gelu(s.mlp, w(R::fc_b, l), int64_t(N) * M, M, s.stream);
    matmul(PassBuffer::qkv, PassBuffer::mlp, l, R::fc2_w);
    ds::cuda::add_bias(s.qkv, w(R::fc2_b, l), int64_t(N) * C, C, s.stream);
    const CudaGpt::State::MoeWeight& coef = mw(R::moe_coef_w, l);
    s.gemm(s.moe_logits, at(in), coef.data, N, coef.K, coef.M);
    ds::cuda::add_bias(s.moe_logits, mw(R::moe_coef_b, l).data, int64_t(N) * 2, 2, s.stream);
    ds::cuda::moe_mix_residual(at(x), s.att, s.qkv, s.moe_logits, N, C, s.stream);
  }
  void final_norm(PassBuffer out, PassBuffer x) {
    ds::cuda::layernorm_rows(at(out), at(x), last, w(nn::Gpt2Role::lnf_w), w(nn::Gpt2Role::lnf_b), S, C, s.stream);
  }
  // logits[S, V] = in[S, C] @ wte^T: column-major logits^T = wte (stored [V, C], i.e. C x V column-major)^T in^T.
  void head(PassBuffer in) {
    const int V = s.shape.vocab;
    const float one = 1.0f, zero = 0.0f;
    DS_CUBLAS_CHECK(cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, V, S, C, &one, w(nn::Gpt2Role::wte), C, at(in), C,
                                &zero, s.logits, V));
  }
};

void CudaGpt::State::enqueue_pass(const PassMeta& m, size_t entries) {
  const GptShape& g = shape;
  const int N = m.n_tokens, S = m.n_seqs, C = g.n_embd, V = g.vocab, HS = C / g.n_head;
  DS_CUDA_CHECK(cudaMemcpyAsync(meta_dev, meta_host, entries * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  const int32_t* ids = meta_dev;
  const int32_t* pos = ids + N;
  const int32_t* seq = pos + N;
  const int32_t* last = seq + N;
  const int32_t* toff = last + S;
  const int32_t* tables = toff + S;
  CudaSteps steps{*this, m, ids, pos, seq, last, toff, tables, ds::cuda::paged_attention_smem_bytes(HS, m.max_pos),
                  N, S, C, 1.0f / std::sqrt(static_cast<float>(HS))};
  gpt2_ragged_forward(steps, g.n_layer);
  DS_CUDA_CHECK(cudaGetLastError());
  DS_CUDA_CHECK(cudaMemcpyAsync(logits_host, logits, sizeof(float) * size_t(S) * V, cudaMemcpyDeviceToHost, stream));
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace ds::inference::cuda_impl
