// GPT-2: learned token and position embeddings, pre-LN transformer blocks, final LayerNorm, and a language-model
// head tied to the token embedding. Parameter names and layouts are Hugging Face GPT-2's (Conv1D weights
// [in, out]), so checkpoints map one to one. The head and the cross-entropy are fused and chunked
// (kernels.h: classifier_forward_backward): the [B*T, V] logits are never materialised during training, except
// under ZeRO-2/3 (Note [Sliced head] in gpt2.cpp).
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ds/nn/layers.h"

namespace ds {

struct Gpt2Config {
  std::string name = "custom";
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 128;
  int vocab_size = 50257;
  int block_size = 256;

  // "gpt2-tiny" (L4 H4 C128), "gpt2-mini" (L6 H6 C384), "gpt2" (124M, L12 H12 C768, block 1024).
  static Gpt2Config preset(const std::string& name);
  static std::vector<std::string> preset_names();
  // A preset name, or a JSON file {"n_layer":..,"n_head":..,"n_embd":..,"vocab_size":..,"block_size":..}
  // (keys may also be given on top of a preset with "preset": "gpt2-tiny").
  static Gpt2Config from_spec(const std::string& preset_or_path);
  // The keys of a model JSON file as an object (`where` names its source in errors), and back.
  static Gpt2Config from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
  void validate() const;
  int64_t num_params() const;
  std::string str() const;
};

// A slice of rows of the token embedding: the owner of its gather unit (the model calls the hooks with it).
class RowSlice final : public Module {
 public:
  RowSlice(std::string name, int64_t row_begin, int64_t row_end)
      : Module(std::move(name)), row_begin(row_begin), row_end(row_end) {}
  void collect_parameters(std::vector<Parameter*>&) const override {}
  const int64_t row_begin, row_end;
};

// Receives initial values for elements [flat_offset, flat_offset + n) of the flat parameter buffer.
using ParamSink = std::function<void(int64_t flat_offset, const float* values, int64_t n)>;

class Gpt2 : public Module {
 public:
  // unit_alignment, with_grads, with_params and the dtypes are passed to ParameterStore::materialize (ZeRO sets
  // them).
  explicit Gpt2(const Gpt2Config& config, int64_t unit_alignment = 1, bool with_grads = true,
                bool with_params = true, DType param_dtype = DType::f32, DType grad_dtype = DType::f32);
  const Gpt2Config& config() const { return config_; }
  ParameterStore& params() { return store_; }
  void collect_parameters(std::vector<Parameter*>& out) const override;

  // GPT-2 initialisation: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_layer)), biases 0,
  // LayerNorm weights 1. The first form writes the resident parameters; the second hands the values, in
  // declaration order and a piece at a time, to `sink` (ZeRO-3 keeps only its partition of them).
  void init_weights(uint64_t seed);
  void init_weights(uint64_t seed, const ParamSink& sink);
  // Hooks are called in pairs around each gather unit: the slices of wte (RowSlice), the position embedding
  // (owned by the model itself), each block, then ln_f. See Note [Gather units] in gpt2.cpp.
  void set_hooks(ModuleHooks* hooks) { hooks_ = hooks; }
  const LayerNorm& ln_f() const { return *ln_f_; }
  const std::vector<std::unique_ptr<TransformerBlock>>& blocks() const { return blocks_; }

  // One micro-batch of training: forward, fused loss, backward. Parameter gradients are accumulated
  // (+=) scaled by grad_scale / (number of target tokens), i.e. the gradient of grad_scale * mean loss.
  // Returns the mean loss.
  float forward_backward(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale);
  // Mean loss without gradients.
  float forward_loss(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T);
  // Full logits [B, T, V] (inference, tests).
  void forward_logits(Ctx& ctx, const int32_t* inputs, int B, int T, float* logits);

 private:
  Tensor forward_hidden(Ctx& ctx, const int32_t* inputs, int B, int T);  // after ln_f: [B*T, C]
  void check_tokens(const int32_t* tokens, int B, int T, bool are_targets) const;
  // Runs the tied head on ln_f's output; with dh, also its backward (see forward_backward).
  double classifier(Ctx& ctx, const Tensor& h, const int32_t* targets, Tensor* dh, float grad_scale);
  double classifier_sliced(Ctx& ctx, const Tensor& h, const int32_t* targets, Tensor* dh, float grad_scale);
  const float* slice_data(const RowSlice& s) const;

  Gpt2Config config_;
  ParameterStore store_;
  Parameter* wte_;
  std::vector<std::unique_ptr<RowSlice>> wte_slices_;
  Parameter* wpe_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;
  std::unique_ptr<LayerNorm> ln_f_;
  ModuleHooks* hooks_ = nullptr;
};

}  // namespace ds
