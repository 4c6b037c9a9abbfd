// GPT-2 over a ragged batch and a blocked KV cache: the inference forward. All new tokens of all sequences go
// through each layer's GEMMs together ([n_tokens, C] rows, whatever sequence they belong to); each token's K and V
// are written to its slot in the cache, and attention reads a sequence's keys and values through its block table
// (positions 0 .. seen + j for its new token j: causal by construction, mixed prefill chunks and decodes alike).
// Only the last new token of each sequence goes through ln_f and the tied head, so a pass costs one [n_seqs, V]
// logits GEMM, not [n_tokens, V]. Weights are fp32 (16-bit files are converted on load), held packed for the
// few-row GEMMs of a decode pass (cpu::panel_gemm).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ds/core/device.h"
#include "ds/inference/kv_cache.h"
#include "ds/inference/ragged_batch.h"
#include "ds/nn/models/gpt2.h"

namespace ds::inference {

// How the inference model holds its weight matrices: fp32 (as trained; the default), or bf16 (half the bytes;
// the GEMMs then round their inputs to bf16 and accumulate in fp32, with AVX512_BF16 where the CPU has it).
enum class WeightFormat { fp32, bf16 };
// "fp32" or "bf16"; ConfigError otherwise.
WeightFormat parse_weight_format(const std::string& name);
const char* weight_format_name(WeightFormat f);
// ConfigError unless weights in this format can run on `device`: bf16 weights are a CPU option.
void check_weights_on_device(WeightFormat weights, Device device);

class InferenceModel {
 public:
  // Copies the parameters of a trained (or initialised) model; the model may go away afterwards.
  explicit InferenceModel(Gpt2& model, WeightFormat weights = WeightFormat::fp32);
  // A checkpoint directory (DIR/latest or DIR/<tag>, written by dspeed train --save) or a safetensors file of
  // every parameter under its Hugging Face GPT-2 name (dspeed ckpt consolidate). The model's shape comes from the
  // checkpoint manifest or the file's "ds_model" metadata; `arch` (a preset or model JSON, as dspeed train
  // --model) overrides it and is needed for files without that metadata. Throws IoError/ConfigError that name
  // the file and what is missing.
  static std::shared_ptr<InferenceModel> load(const std::string& path, const std::string& arch = "",
                                              WeightFormat weights = WeightFormat::fp32);

  const Gpt2Config& config() const { return config_; }
  WeightFormat weight_format() const { return weights_; }

  // Activations of one pass, kept between passes so steady-state serving allocates nothing.
  struct Scratch {
    std::vector<float> x, h, qkv, att, mlp, scores;
    std::vector<int32_t> pos;                   // of each token
    std::vector<const int32_t*> tables;         // block table of each sequence
  };
  // logits[n_seqs, V]: the distribution after each sequence's last new token. Writes the batch's K and V into
  // cache (its blocks must have been reserved). The model is read-only: engines may share it.
  void forward(const RaggedBatch& batch, KvCache& cache, Scratch& scratch, float* logits) const;

  // The weights as plain row-major arrays in Hugging Face GPT-2 layouts (wte [V, C], Conv1D weights [in, out]),
  // unpacked from the panels: what a device copy is made from (device_forward.h). fp32 weights only.
  struct PlainLayer {
    std::vector<float> ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
  };
  struct PlainWeights {
    std::vector<float> wte, wpe, lnf_w, lnf_b;
    std::vector<PlainLayer> layers;
  };
  PlainWeights plain_weights() const;

 private:
  InferenceModel() = default;
  // A [K, M] weight in column panels: fp32 for cpu::panel_gemm, or bf16 pairs (32-bit words in an i32 tensor) for
  // cpu::panel_gemm_bf16 (Note [Inference weights] in model_runner.cpp).
  struct Matrix {
    int K = 0, M = 0;
    Tensor panels;
    const uint32_t* words() const { return static_cast<const uint32_t*>(panels.raw()); }
  };
  // out[rows, M] = in @ m + bias (bias may be null), in the model's weight format.
  void gemm(float* out, const float* in, const Matrix& m, const float* bias, int rows) const;
  struct Layer {
    Tensor ln1_w, ln1_b, qkv_b, proj_b, ln2_w, ln2_b, fc_b, fc2_b;
    Matrix qkv, proj, fc, fc2;
  };
  void take_weights(Gpt2& model);

  Gpt2Config config_;
  WeightFormat weights_ = WeightFormat::fp32;
  Tensor wpe_, lnf_w_, lnf_b_;
  Matrix head_;  // wte^T; the embedding lookup reads its columns
  std::vector<Layer> layers_;
};

}  // namespace ds::inference
