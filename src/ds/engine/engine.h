// ds::Engine: a model + a DeepSpeed config + a communicator -> train_batch / eval_loss (DESIGN decision 9).
// It builds the model with the parameter layout its ZeRO stage needs (units aligned to the data-parallel size;
// no full gradient buffer from stage 2 on), runs gradient accumulation over gradient_accumulation_steps
// micro-batches, hands reductions and the optimizer step to ZeroOptimizer, and applies DeepSpeed's gradient
// clipping and learning-rate schedule. Every rank calls train_batch with its own micro-batches. With fp16 or bf16
// it trains in mixed precision (Note [Mixed precision] in zero/optimizer_step.cpp) and, for fp16, scales the loss:
// a step whose gradients overflow is skipped, logged, and does not advance the learning-rate schedule.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "ds/comm/communicator.h"
#include "ds/comm/topology.h"
#include "ds/engine/checkpoint.h"
#include "ds/engine/pipeline_executor.h"
#include "ds/nn/models/gpt2.h"
#include "ds/nn/tensor_parallel.h"
#include "ds/optim/loss_scaler.h"
#include "ds/optim/lr_schedule.h"
#include "ds/config/config.h"
#include "ds/zero/zero_optimizer.h"

namespace ds::engine {

struct StepResult {
  double loss = 0;       // mean over the batch's micro-batches and ranks
  double grad_norm = 0;  // of the averaged gradient, before clipping
  double lr = 0;         // the learning rate this step used
  bool clipped = false;
  bool skipped = false;  // fp16: the gradients overflowed and the update was skipped
  double loss_scale = 1;  // the scale this step's backward used
  int64_t tokens = 0;    // tokens of the global batch
  double recompute_seconds = 0;  // activation checkpointing: time this rank spent recomputing forwards
  // MoE routing over the global batch (all zero without MoE): the auxiliary losses (sums over the MoE layers, as
  // they enter the loss before their coefficients; means over micro-batches and ranks), the fraction of
  // assignments dropped for capacity, and the assignments each expert was routed (min, mean and max over every
  // expert of every MoE layer).
  double moe_aux_loss = 0, moe_z_loss = 0, moe_dropped = 0;
  double moe_tokens_min = 0, moe_tokens_mean = 0, moe_tokens_max = 0;
};

class Engine {
 public:
  // Fills one micro-batch: inputs and targets, each train_micro_batch_size_per_gpu x seq_len int32.
  using BatchFn = std::function<void(int32_t* inputs, int32_t* targets)>;

  // comm may be null for a single process. The config's batch triple must have been resolved for comm's size.
  Engine(const nn::Gpt2Config& model_config, const config::DeepSpeedConfig& config, int seq_len,
         comm::Communicator* comm = nullptr, uint64_t seed = 1234);
  ~Engine();

  StepResult train_batch(const BatchFn& next_micro_batch);
  // Mean loss over `num_batches` batches of `batch_size` sequences from `next` on every rank, averaged over ranks.
  double eval_loss(const BatchFn& next, int64_t num_batches, int batch_size);

  int64_t global_steps() const { return global_steps_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  double loss_scale() const { return scaler_.scale(); }
  // The storage dtypes the config asks for: fp16/bf16 parameters, and gradients in data_types.grad_accum_dtype
  // (DeepSpeed's default: fp32 for bf16 at stage 0, else the parameters' dtype).
  static zero::ZeroPrecision precision_for(const config::DeepSpeedConfig& config);

  // Checkpoints (Note [Checkpoint layout] in checkpoint.h). Collectives: every rank calls them. save returns the
  // tag (default "global_step<N>"); load takes the tag in DIR/latest when `tag` is empty, works at any world size
  // and stage, and returns the client state saved with it.
  std::string save_checkpoint(const std::string& dir, const std::string& tag = "",
                              const nlohmann::json& client_state = nlohmann::json::object());
  nlohmann::json load_checkpoint(const std::string& dir, const std::string& tag = "");
  // Every parameter of the whole model, unpadded, in declaration order (a collective: every rank calls it; under
  // tensor parallelism the ranks' shares are put together).
  std::vector<float> full_parameters();
  // Replaces the parameters (not the optimizer state) with those of a safetensors file holding every parameter
  // under its Hugging Face GPT-2 name, as `dspeed ckpt consolidate` writes; F32, BF16 or F16.
  void load_weights(const std::string& path);
  double current_lr() const;
  nn::Gpt2& model() { return *model_; }
  comm::Communicator& comm() { return *comm_; }
  comm::Topology& topology() { return *topology_; }
  zero::ZeroOptimizer& optimizer() { return *optimizer_; }
  // An MoE model's experts' optimizer, over the expert-data-parallel group (null without experts).
  zero::ZeroOptimizer* expert_optimizer() { return expert_optimizer_.get(); }
  const zero::ZeroOptimizer& optimizer_const() const { return *optimizer_; }
  const config::DeepSpeedConfig& config() const { return config_; }
  int micro_batch_size() const { return micro_; }
  // This rank's MoE routing statistics of the last step (empty without MoE).
  const nn::MoeStats& moe_stats() const { return moe_stats_; }
  int seq_len() const { return seq_len_; }

 private:
  double average_over_ranks(double value);
  // The last pipeline stage's value (the loss, which it computes), on every stage.
  double from_last_stage(double value);
  // Switches the runner's activation checkpointing on as config_.activation_checkpointing asks.
  void configure_checkpointing();
  // The dense optimizer, and the experts' when the model has some.
  std::vector<zero::ZeroOptimizer*> optimizers();
  std::vector<CheckpointPart> checkpoint_parts();
  // full_parameters() of an MoE model: `dense` is this rank's dense parameters.
  std::vector<float> with_experts(const std::vector<float>& dense);
  // The gradient norm over both optimizers' gradients (Note [Expert gradients] in engine.cpp).
  double grad_norm();
  // The step's MoE statistics, summed over the data-parallel ranks, into r.
  void report_moe(StepResult& r);

  config::DeepSpeedConfig config_;
  std::unique_ptr<comm::Communicator> own_comm_;
  comm::Communicator* comm_;
  std::unique_ptr<comm::Topology> topology_;
  std::unique_ptr<nn::TensorParallelGroup> tp_group_;  // null without tensor parallelism
  std::unique_ptr<comm::Communicator> tied_;           // wte's first and last stage (null: not one of them)
  int micro_;
  int seq_len_;
  std::unique_ptr<nn::Gpt2> model_;
  std::unique_ptr<zero::ZeroOptimizer> optimizer_;
  std::unique_ptr<nn::ExpertParallelGroup> ep_group_;         // null unless ep_size > 1
  std::unique_ptr<zero::ZeroOptimizer> expert_optimizer_;     // null without experts
  std::unique_ptr<nn::ModuleHooks> expert_hooks_;             // routes each unit's hooks to its optimizer
  nn::MoeStats moe_stats_;
  std::unique_ptr<PipelineExecutor> pipeline_;  // with pipeline parallelism
  optim::LrSchedule schedule_;
  uint64_t seed_;
  nn::Ctx ctx_;
  nn::Ctx eval_ctx_;
  std::vector<int32_t> inputs_, targets_;
  int64_t global_steps_ = 0;
  int64_t skipped_steps_ = 0;  // fp16 overflows: counted in global_steps_, not in the LR schedule
  optim::LossScaler scaler_;
};

}  // namespace ds::engine
