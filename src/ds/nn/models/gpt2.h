// GPT-2: learned token and position embeddings, pre-LN transformer blocks, final LayerNorm, and a language-model
// head tied to the token embedding. Parameter names and layouts are Hugging Face GPT-2's (Conv1D weights
// [in, out]), so checkpoints map one to one. The head and the cross-entropy are fused and chunked
// (kernels.h: classifier_forward_backward): the [B*T, V] logits are never materialised during training, except
// under ZeRO-2/3 (Note [Sliced head] in gpt2.cpp). The model is a chain of Blocks; a ModuleRunner drives it and
// calls the ZeRO hooks, so no model code here touches them.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ds/nn/layers.h"
#include "ds/nn/models/gpt2_spec.h"
#include "ds/nn/moe.h"
#include "ds/nn/module_runner.h"
#include "ds/nn/tensor_parallel.h"

namespace ds::nn {

// Mixture of Experts in GPT-2 (moe.h): the MLP of every `layer_interval`-th block is an MoE layer, as
// Megatron-DeepSpeed's --expert-interval places them: block i (from 0) when (i + 1) % layer_interval == 0.
// The model JSON's "moe" object, with DeepSpeed's MoE argument names (Gpt2MoeConfig::from_json).
struct Gpt2MoeConfig {
  // Experts per MoE block: one count for all, or one per MoE block (PR-MoE's pyramid); a count of 1 leaves the
  // block dense, as in Megatron-DeepSpeed. Empty: no MoE.
  std::vector<int> num_experts;
  int layer_interval = 1;
  MoeOptions options;
  // The expert-parallel size: how many data-parallel ranks share one set of experts. A layout, not part of the
  // model: a checkpoint loads at any.
  int ep_size = 1;
  bool enabled() const { return !num_experts.empty(); }
  // Experts of block i (0 for a dense block), for a model of n_layer blocks.
  int experts_of(int block) const;
  // The "moe" object's keys, on top of these values (a preset's); `where` names the model file in errors.
  static Gpt2MoeConfig from_json(const nlohmann::json& j, const std::string& where);
  void apply_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
  void validate(int n_layer) const;
  std::string str() const;
};

struct Gpt2Config {
  std::string name = "custom";
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 128;
  int vocab_size = 50257;
  int block_size = 256;
  Gpt2MoeConfig moe;

  // "gpt2-tiny" (L4 H4 C128), "gpt2-mini" (L6 H6 C384), "gpt2" (124M, L12 H12 C768, block 1024); "gpt2-moe"
  // (gpt2-mini with 8 experts, top-1, in every other block) and "gpt2-mixtral" (gpt2-mini with Mixtral's routing:
  // top-2 of 8 experts in every block, dropless).
  static Gpt2Config preset(const std::string& name);
  static std::vector<std::string> preset_names();
  // A preset name, or a JSON file {"n_layer":..,"n_head":..,"n_embd":..,"vocab_size":..,"block_size":..}
  // (keys may also be given on top of a preset with "preset": "gpt2-tiny").
  static Gpt2Config from_spec(const std::string& preset_or_path);
  // The keys of a model JSON file as an object (`where` names its source in errors), and back.
  static Gpt2Config from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
  void validate() const;
  // The model's weights (gpt2_spec.h), and how many values they hold.
  std::vector<Gpt2Weight> weight_spec() const;
  int64_t num_params() const;
  // Parameters one token's forward uses: an MoE block counts k of its experts.
  int64_t active_params() const;
  // Experts per block (0 for a dense one); empty without MoE.
  std::vector<int> experts_per_block() const;
  // The chain of layers a pipeline splits: embedding, n_layer transformer blocks, ln_f, head; each with its class
  // name and the parameters it uses (the tied wte counted in the embedding and the head).
  struct Layer {
    const char* type;
    int64_t params;
  };
  std::vector<Layer> layers() const;
  std::string str() const;
};

// The owner of one row-slice unit of the token embedding (hooks and ZeRO identify units by their owner).
class RowSlice final : public Module {
 public:
  explicit RowSlice(std::string name) : Module(std::move(name)) {}
  void collect_parameters(std::vector<Parameter*>&) const override {}
};

// Token ids -> token + position embeddings [B*T, C]. Owns the wpe unit; reads rows of the tied wte. Under tensor
// parallelism wte is split by vocabulary rows (Megatron's vocabulary-parallel embedding): each rank looks up the
// ids in its rows, zeros for the others, and the group sums the rows.
class Gpt2Embedding final : public Block {
 public:
  Gpt2Embedding(ParameterStore& store, const Gpt2Config& config, Parameter* wte, TensorParallelGroup* tp);
  Tensor forward(Ctx& ctx, const Tensor& x, Pass& pass) override;
  Tensor backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor dx) override;
  const char* type_name() const override { return "Gpt2Embedding"; }
  void collect_parameters(std::vector<Parameter*>& out) const override;

 private:
  void forward_parallel(Ctx& ctx, const Tensor& x, const Tensor& ids, Pass& pass);
  void backward_parallel(Ctx& ctx, const Tensor& dy, const Tensor& ids, Pass& pass);
  int C_;
  Parameter* wte_;
  Parameter* wpe_;
  TensorParallelGroup* tp_;
};

// The final LayerNorm as a block of its own (its own gather unit).
class Gpt2FinalNorm final : public Block {
 public:
  Gpt2FinalNorm(ParameterStore& store, const std::string& name, int C) : Block(name), ln_(store, name, C) {}
  Tensor forward(Ctx& ctx, const Tensor& x, Pass&) override { return ln_.forward(ctx, x); }
  Tensor backward(Ctx& ctx, const Tensor& dy, Pass&, Tensor dx) override;
  const char* type_name() const override { return "Gpt2FinalNorm"; }
  void collect_parameters(std::vector<Parameter*>& out) const override { ln_.collect_parameters(out); }

 private:
  LayerNorm ln_;
};

// The language-model head tied to wte, with the cross-entropy loss (or, with Pass::logits, the full logits). In
// training its forward also runs its backward (Note [Sliced head] in gpt2.cpp); it has no unit of its own. Under
// tensor parallelism it is vocabulary-parallel (Note [Vocabulary-parallel head] in gpt2.cpp).
class Gpt2Head final : public Block {
 public:
  Gpt2Head(const Gpt2Config& config, Parameter* wte, TensorParallelGroup* tp)
      : Block("lm_head"), C_(config.n_embd), V_(config.vocab_size), wte_(wte), tp_(tp) {}
  Tensor forward(Ctx& ctx, const Tensor& h, Pass& pass) override;
  Tensor backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor dx) override;
  std::vector<const Module*> units() const override { return {}; }
  bool is_loss() const override { return true; }
  const char* type_name() const override { return "Gpt2Head"; }
  void collect_parameters(std::vector<Parameter*>&) const override {}

 private:
  double classifier(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh);
  double classifier_sliced(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh);
  double classifier_parallel(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh);
  int C_, V_;
  Parameter* wte_;
  TensorParallelGroup* tp_;
};

// The layers of the chain (Gpt2Config::layers) this model holds: [first, last); a pipeline stage holds a range,
// a whole model all of them.
struct LayerRange {
  int first = 0, last = -1;  // last -1: to the end
};

// Receives initial values for elements [flat_offset, flat_offset + n) of the flat parameter buffer.
using ParamSink = std::function<void(int64_t flat_offset, const float* values, int64_t n)>;

// GPT-2 as a chain of blocks run by a ModuleRunner: embedding, n_layer transformer blocks, ln_f, head; wte is
// tied between the embedding and the head. Its parameters are the weight spec's, in its order (checked when built).
// A pipeline stage builds the layers of its range only, with the parameters they use: the first and the last
// stage both hold wte (the engine sums its gradient over them, as DeepSpeed's tied layers do).
// Where an MoE model's experts go: the expert-parallel group (null: all experts here) and the unit alignment of the
// experts' store (ZeRO aligns it to the expert-data-parallel size).
struct ExpertPlacement {
  ExpertParallelGroup* group = nullptr;
  int64_t unit_alignment = 1;
};

class Gpt2 : public Module {
 public:
  // unit_alignment, with_grads, with_params and the dtypes are passed to ParameterStore::materialize (ZeRO sets
  // them). With `tp` (which must outlive the model), this rank holds its tensor-parallel share of the model: QKV and
  // FC column-parallel, the output projections row-parallel, wte split by vocabulary rows (tensor_parallel.h).
  // An MoE model keeps its experts in a second store (expert_params()), this rank's E/ep of each layer's.
  explicit Gpt2(const Gpt2Config& config, int64_t unit_alignment = 1, bool with_grads = true,
                bool with_params = true, DType param_dtype = DType::f32, DType grad_dtype = DType::f32,
                TensorParallelGroup* tp = nullptr, LayerRange range = {}, ExpertPlacement experts = {});
  const LayerRange& range() const { return range_; }
  bool has_embedding() const { return range_.first == 0; }
  bool has_head() const { return range_.last == config_.n_layer + 3; }
  const Gpt2Config& config() const { return config_; }
  ParameterStore& params() { return store_; }
  // The experts' parameters (empty unless the model has MoE blocks).
  ParameterStore& expert_params() { return expert_store_; }
  bool has_experts() const { return !expert_store_.all().empty(); }
  void collect_parameters(std::vector<Parameter*>& out) const override;

  // GPT-2 initialisation by role: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_layer)), biases 0,
  // LayerNorm weights 1. The first form writes the resident parameters; the second hands the values, in
  // declaration order and a piece at a time, to `sink` (ZeRO-3 keeps only its partition of them).
  void init_weights(uint64_t seed);
  void init_weights(uint64_t seed, const ParamSink& sink, const ParamSink& expert_sink = {});
  // The runner calls the hooks around each gather unit (Note [Gather units] in gpt2.cpp).
  void set_hooks(ModuleHooks* hooks) { runner_->set_hooks(hooks); }
  ModuleRunner& runner() { return *runner_; }
  const std::vector<std::unique_ptr<TransformerBlock>>& blocks() const { return blocks_; }

  // One micro-batch of training: forward, fused loss, backward. Parameter gradients are accumulated
  // (+=) scaled by grad_scale / (number of target tokens), i.e. the gradient of grad_scale * mean loss.
  // Returns the mean loss.
  // MoE: `noise_seed` seeds the routing noise; the routing statistics are added to `moe` when given.
  float forward_backward(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale,
                         uint64_t noise_seed = 0, MoeStats* moe = nullptr);
  // Mean loss without gradients.
  float forward_loss(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T);
  // Full logits [B, T, V] (inference, tests; not under tensor parallelism).
  void forward_logits(Ctx& ctx, const int32_t* inputs, int B, int T, float* logits);
  // Checks token ids and the batch shape against the model (targets may be -1); returns the number of targets
  // that count (with are_targets).
  int64_t check_tokens(const int32_t* tokens, int B, int T, bool are_targets) const;

 private:
  void check_against_spec() const;

  Gpt2Config config_;
  TensorParallelGroup* tp_;
  LayerRange range_;
  ParameterStore store_;
  ParameterStore expert_store_;
  Parameter* wte_ = nullptr;  // held by the stages with the embedding or the head
  std::vector<std::unique_ptr<RowSlice>> wte_slices_;
  std::unique_ptr<Gpt2Embedding> embedding_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;
  std::unique_ptr<Gpt2FinalNorm> ln_f_;
  std::unique_ptr<Gpt2Head> head_;
  std::unique_ptr<ModuleRunner> runner_;
};

}  // namespace ds::nn
