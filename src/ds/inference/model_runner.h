// GPT-2 over a ragged batch and a blocked KV cache: the inference forward. All new tokens of all sequences go
// through each layer's GEMMs together ([n_tokens, C] rows, whatever sequence they belong to); each token's K and V
// are written to its slot in the cache, and attention reads a sequence's keys and values through its block table
// (positions 0 .. seen + j for its new token j: causal by construction, mixed prefill chunks and decodes alike).
// Only the last new token of each sequence goes through ln_f and the tied head, so a pass costs one [n_seqs, V]
// logits GEMM, not [n_tokens, V]. Weights are fp32 (16-bit files are converted on load), held packed for the
// few-row GEMMs of a decode pass (cpu::panel_gemm). The layer sequence is ragged_forward.h's, shared with the CUDA
// forward; the weights are the spec's (gpt2_spec.h), read from a WeightSource.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include "ds/core/device.h"
#include "ds/inference/kv_cache.h"
#include "ds/inference/ragged_batch.h"
#include "ds/inference/weight_source.h"
#include "ds/nn/models/gpt2.h"
#include "ds/nn/tensor_parallel.h"

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
  // Places the source's weights for `device`: on the CPU, read one at a time into the panels of the CPU forward
  // (the source may go away afterwards); for any other device the source is kept, and an engine's device forward
  // (device_forward.h) copies from it, so no host copy of the model is made.
  // With `tp` (CPU only; it must outlive the model), this rank holds its tensor-parallel share of each layer
  // (Note [Tensor-parallel inference] in model_runner.cpp), as DeepSpeed-Inference's AutoTP splits a model.
  InferenceModel(std::shared_ptr<const WeightSource> source, WeightFormat weights = WeightFormat::fp32,
                 Device device = Device::cpu(), nn::TensorParallelGroup* tp = nullptr);
  // Copies the parameters of a trained (or initialised) model, for the CPU; the model may go away afterwards.
  explicit InferenceModel(nn::Gpt2& model, WeightFormat weights = WeightFormat::fp32,
                          nn::TensorParallelGroup* tp = nullptr);
  InferenceModel(const InferenceModel&) = delete;
  InferenceModel& operator=(const InferenceModel&) = delete;
  // open_weight_source(path, arch) placed for `device` (weight_source.h: what the path may be, and the errors).
  static std::shared_ptr<InferenceModel> load(const std::string& path, const std::string& arch = "",
                                              WeightFormat weights = WeightFormat::fp32,
                                              Device device = Device::cpu(), nn::TensorParallelGroup* tp = nullptr);
  // Ranks the layers are split across, and the attention heads this rank holds (its KV cache's).
  int tp_size() const { return tp_ ? tp_->size() : 1; }
  int local_heads() const { return config_.n_head / tp_size(); }

  const nn::Gpt2Config& config() const { return config_; }
  WeightFormat weight_format() const { return weights_; }
  // Where the weights were placed: the CPU, or the device whose forward reads them.
  Device device() const { return device_; }
  // The weights as a source again, for a device copy: the kept source, or the CPU panels unpacked (fp32 only).
  const WeightSource& weights() const;

  // Activations of one pass, kept between passes so steady-state serving allocates nothing.
  struct Scratch {
    std::vector<float> x, h, qkv, att, mlp, last, stats, scores;
    std::vector<float> moe_logits, moe_rows, moe_hidden, moe_out;  // MoE layers
    std::vector<int32_t> pos;                   // of each token
    std::vector<const int32_t*> tables;         // block table of each sequence
  };
  // logits[n_seqs, V]: the distribution after each sequence's last new token. Writes the batch's K and V into
  // cache (its blocks must have been reserved). The model is read-only: engines may share it. The CPU forward:
  // a model placed on another device has no CPU weights (DeviceError).
  void forward(const RaggedBatch& batch, KvCache& cache, Scratch& scratch, float* logits) const;

 private:
  struct CpuSteps;
  class PanelSource;
  // One placed weight: a vector as is, or a [K, M] matrix in column panels: fp32 for cpu::panel_gemm, or bf16
  // pairs (32-bit words in an i32 tensor) for cpu::panel_gemm_bf16 (Note [Inference weights] in
  // model_runner.cpp). wte is held as the head's [C, V] matrix; the embedding reads its columns.
  struct Placed {
    int K = 0, M = 0;  // 0 for a vector
    Tensor values;
    const uint32_t* words() const { return static_cast<const uint32_t*>(values.raw()); }
  };
  void place(const WeightSource& source);
  // How this rank's share of weight w is cut from it (whole: not split).
  TpSplit tp_split_of(const nn::Gpt2Weight& w) const;
  const Placed& at(nn::Gpt2Role role, int layer) const;
  // An MoE layer's weights: the gate and coefficient (expert -1) and each expert's.
  const Placed& at_moe(nn::Gpt2Role role, int layer, int expert = -1) const;
  // out[rows, M] = in @ m + bias (bias may be null), in the model's weight format.
  void gemm(float* out, const float* in, const Placed& m, const float* bias, int rows) const;

  nn::Gpt2Config config_;
  WeightFormat weights_ = WeightFormat::fp32;
  Device device_ = Device::cpu();
  std::vector<Placed> placed_;  // by gpt2_weight_slot
  std::map<std::tuple<int, int, int>, Placed> moe_placed_;  // by (layer, role, expert)
  std::shared_ptr<const WeightSource> source_;
  nn::TensorParallelGroup* tp_ = nullptr;
};

}  // namespace ds::inference
