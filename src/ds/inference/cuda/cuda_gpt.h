// The GPT-2 inference forward on an NVIDIA GPU: the weights, the blocked KV cache and the pass's activations live
// in device memory; the host hands in each pass's ragged-batch metadata as plain arrays and gets one logit row per
// sequence back. The layer sequence is ragged_forward.h's, as the CPU forward's (model_runner.h): all new tokens
// through each layer's GEMMs together (cuBLAS, fp32), each token's K and V into its slot, attention of each token
// over positions 0..pos of its sequence through the block table, and the head on each sequence's last new token.
// This header is C++17 (CUDA sources are compiled as C++17); the engine reaches it through device_forward.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ds/nn/models/gpt2_spec.h"

namespace ds::inference::cuda_impl {

// One MoE layer's routing of a pass's n tokens, made on the host (nn/moe_gating.h): expert e's grouped rows are
// [offset[e], offset[e+1]), grouped row i is token token[i]; assignment a = t*k + j goes to row[a] with weight[a].
struct MoeRoute {
  std::vector<int64_t> offset;
  std::vector<int32_t> token, row;
  std::vector<float> weight;
};
// Routes a layer's pass: gate logits [n, E] (host memory) in, the route out.
using MoeRouter = std::function<void(int layer, const float* logits, int n, MoeRoute& out)>;

struct GptShape {
  int device = 0;  // CUDA device index
  int n_layer = 0, n_head = 0, n_embd = 0, vocab = 0, context = 0;
  int32_t kv_blocks = 0, kv_block_size = 0;
  int32_t max_tokens = 0, max_seqs = 0;  // per pass
  // MoE (nn/moe.h): each layer's experts (0: a dense MLP; empty: no MoE), top-k, Residual-MoE, and the router.
  std::vector<int> experts;
  int moe_k = 1;
  bool moe_residual = false;
  MoeRouter route;
};

// Fills dst with one weight of the spec (gpt2_spec.h), fp32 in its Hugging Face layout.
using WeightReader = std::function<void(const nn::Gpt2Weight& w, float* dst)>;

// One pass, host arrays: token i has id ids[i] at position pos[i] of sequence token_seq[i]; sequence s's last new
// token is last_token[s] and its block table is tables[table_offset[s] ...].
struct PassMeta {
  int n_tokens = 0, n_seqs = 0, n_table_entries = 0, max_pos = 0;  // max_pos > every pos
  const int32_t *ids, *pos, *token_seq, *last_token, *table_offset, *tables;
};

class CudaGpt {
 public:
  // Copies the weights of `spec` to the GPU, one at a time as `read` gives them, and allocates the KV cache and
  // the activations of a max_tokens pass. Throws DeviceError (no GPU, a CUDA or cuBLAS failure, a context too long
  // for the attention kernel), ConfigError (a head size it does not support) or OutOfMemory naming the bytes asked
  // for.
  CudaGpt(const GptShape& shape, const std::vector<nn::Gpt2Weight>& spec, const WeightReader& read);
  ~CudaGpt();
  CudaGpt(const CudaGpt&) = delete;
  CudaGpt& operator=(const CudaGpt&) = delete;

  // Runs one pass and returns its logits [n_seqs, vocab] in (pinned) host memory, valid until the next forward.
  const float* forward(const PassMeta& meta);
  int64_t kv_bytes() const;
  int64_t weight_bytes() const;
  std::string device_name() const;

 private:
  struct State;
  friend struct CudaSteps;  // the step set of the pass (cuda_gpt.cu)
  static void release(State* s) noexcept;
  State* s_;
};

}  // namespace ds::inference::cuda_impl
