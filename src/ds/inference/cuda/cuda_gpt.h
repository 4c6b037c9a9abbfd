// The GPT-2 inference forward on an NVIDIA GPU: the weights, the blocked KV cache and the pass's activations live
// in device memory; the host hands in each pass's ragged-batch metadata as plain arrays and gets one logit row per
// sequence back. Same algorithm as InferenceModel::forward (model_runner.h): all new tokens through each layer's
// GEMMs together (cuBLAS, fp32), each token's K and V into its slot, attention of each token over positions
// 0..pos of its sequence through the block table, and the head on each sequence's last new token only.
// This header is C++17 (CUDA sources are compiled as C++17); the engine reaches it through device_forward.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::inference::cuda_impl {

struct GptShape {
  int device = 0;  // CUDA device index
  int n_layer = 0, n_head = 0, n_embd = 0, vocab = 0, context = 0;
  int32_t kv_blocks = 0, kv_block_size = 0;
  int32_t max_tokens = 0, max_seqs = 0;  // per pass
};

// Host weights in Hugging Face GPT-2 layouts: wte [V, C], wpe [context, C], Conv1D weights [in, out] row-major.
struct GptLayerWeights {
  const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc_w, *fc_b, *fc2_w, *fc2_b;
};
struct GptWeights {
  const float *wte, *wpe, *lnf_w, *lnf_b;
  std::vector<GptLayerWeights> layers;
};

// One pass, host arrays: token i has id ids[i] at position pos[i] of sequence token_seq[i]; sequence s's last new
// token is last_token[s] and its block table is tables[table_offset[s] ...].
struct PassMeta {
  int n_tokens = 0, n_seqs = 0, n_table_entries = 0, max_pos = 0;  // max_pos > every pos
  const int32_t *ids, *pos, *token_seq, *last_token, *table_offset, *tables;
};

class CudaGpt {
 public:
  // Copies the weights to the GPU and allocates the KV cache and the activations of a max_tokens pass. Throws
  // DeviceError (no GPU, a CUDA or cuBLAS failure, a context too long for the attention kernel), ConfigError (a
  // head size it does not support) or OutOfMemory naming the bytes asked for.
  CudaGpt(const GptShape& shape, const GptWeights& weights);
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
  static void release(State* s) noexcept;
  State* s_;
};

}  // namespace ds::inference::cuda_impl
