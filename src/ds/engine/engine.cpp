// Engine: model layout for the ZeRO stage, accumulation, clipping, schedule and the step.
// Micro-batch gradients are scaled by 1/gas in the model's backward; the 1/N average over ranks is applied by
// ZeroOptimizer, so the global gradient is the mean over all micro-batches of all ranks.
#include "ds/engine/engine.h"

#include <algorithm>
#include <climits>
#include <unordered_map>
#include <cmath>


#include "ds/ckpt/safetensors.h"
#include "ds/core/log.h"
#include "ds/core/rng.h"
#include "ds/optim/adamw.h"
#include "ds/engine/checkpoint.h"
#include "ds/engine/comm_expert_parallel.h"
#include "ds/engine/comm_tensor_parallel.h"
#include "ds/pipe/partition.h"

namespace ds::engine {

// Note [Expert gradients]
// An MoE model's experts live in a store of their own with a ZeRO optimizer over the expert-data-parallel group
// (DeepSpeed's expert groups, comm/topology.h); the rest of the model is reduced over the whole data-parallel
// group as usual. Expert e on rank r sees the tokens of every rank of its expert-parallel group, so its gradient
// there is already the sum over those ep ranks' losses; the expert optimizer sums over its dp/ep ranks and divides
// by dp/ep, so one more 1/ep gives the mean over all dp ranks, as every dense gradient is. The global norm is
// sqrt(dense^2 + experts^2): the experts' partial sums go over the expert-data group and then the expert group,
// covering every expert once. Clipping and the loss scale's overflow check use that norm, and both optimizers step
// (or skip) together.
namespace {
// The runner's hooks for a model with experts: each unit's calls go to the optimizer that holds it.
class ExpertHooks final : public nn::ModuleHooks {
 public:
  ExpertHooks(zero::ZeroOptimizer& dense, zero::ZeroOptimizer& experts, const nn::ParameterStore& expert_store)
      : dense_(dense), experts_(experts), expert_store_(expert_store) {}
  void pre_forward(const nn::Module& m) override { of(m).pre_forward(m); }
  void post_forward(const nn::Module& m) override { of(m).post_forward(m); }
  void pre_backward(const nn::Module& m) override { of(m).pre_backward(m); }
  void post_backward(const nn::Module& m) override { of(m).post_backward(m); }
  const float* slice_data(const nn::Module& slice) override { return dense_.slice_data(slice); }
  float* slice_grads(const nn::Module& slice) override { return dense_.slice_grads(slice); }
  void lookup_rows(const nn::Parameter& p, const int32_t* ids, int64_t n, float* out) override {
    dense_.lookup_rows(p, ids, n, out);
  }
  void accumulate_row_grads(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) override {
    dense_.accumulate_row_grads(p, ids, rows, n);
  }

 private:
  zero::ZeroOptimizer& of(const nn::Module& m) { return expert_store_.unit_of(&m) ? experts_ : dense_; }
  zero::ZeroOptimizer& dense_;
  zero::ZeroOptimizer& experts_;
  const nn::ParameterStore& expert_store_;
};
}  // namespace

Engine::Engine(const nn::Gpt2Config& model_config, const config::DeepSpeedConfig& config, int seq_len,
               comm::Communicator* comm, uint64_t seed)
    : config_(config),
      own_comm_(comm ? nullptr : comm::make_self_communicator()),
      comm_(comm ? comm : own_comm_.get()),
      micro_(static_cast<int>(std::min<int64_t>(config.train_micro_batch_size_per_gpu, INT32_MAX))),
      seq_len_(seq_len),
      schedule_(config.scheduler, config.optimizer.lr),
      seed_(seed) {
  DS_CHECK_AS(ConfigError, config.world_size == comm_->size() &&
              config.dp_world_size * config.tensor_parallel_size * config.pipeline_parallel_size == comm_->size(),
              "[engine] the config was read for {} rank(s) ({} data-parallel) but the job has {}; load the config with "
              "the job's world size",
              config.world_size, config.dp_world_size, comm_->size());
  const int pp = config.pipeline_parallel_size;
  // DeepSpeed's PipelineEngine asserts it: ZeRO-2 and -3 partition gradients during backward, which a pipeline's
  // interleaved micro-batches do not allow.
  DS_CHECK_AS(ConfigError, pp == 1 || config.zero.stage < 2, "[engine] ZeRO-2 and ZeRO-3 are incompatible with "
              "pipeline parallelism (as in DeepSpeed); {} asks for stage {} with {} pipeline stages: use ZeRO stage 0 "
              "or 1, or no pipeline", config.source, config.zero.stage, pp);
  const bool moe = model_config.moe.enabled();
  const int ep = moe ? model_config.moe.ep_size : 1;
  if (moe) {
    DS_CHECK_AS(ConfigError, pp == 1, "[engine] MoE models with pipeline parallelism are not supported yet; train "
                "{} with data and expert parallelism (pipeline size 1)", model_config.name);
    // DeepSpeed's engine asserts the same: its stage 3 does not partition expert parameters.
    DS_CHECK_AS(ConfigError, config.zero.stage < 3, "[engine] ZeRO-3 does not support MoE models (as in DeepSpeed); "
                "{} asks for stage 3: use ZeRO stage 0, 1 or 2", config.source);
    DS_CHECK_AS(ConfigError, config.dp_world_size % ep == 0, "[engine] the expert-parallel size {} must divide the "
                "data-parallel size {} (DeepSpeed asserts the same); choose an ep_size that divides {}", ep,
                config.dp_world_size, config.dp_world_size);
  }
  topology_ = std::make_unique<comm::Topology>(
      *comm_, comm::TopologyShape{config.pipeline_parallel_size, config.dp_world_size, config.tensor_parallel_size,
                                  ep});
  comm::Communicator& dp = topology_->data();
  if (ep > 1) ep_group_ = std::make_unique<CommExpertParallel>(topology_->expert());
  if (config.tensor_parallel_size > 1) tp_group_ = std::make_unique<CommTensorParallel>(topology_->model());
  DS_CHECK_AS(ConfigError, seq_len > 0 && seq_len <= model_config.block_size,
              "[engine] sequence length {} must be between 1 and the model's block_size {}", seq_len,
              model_config.block_size);
  DS_CHECK_AS(ConfigError, config.train_micro_batch_size_per_gpu * seq_len <= (int64_t(1) << 24),
              "[engine] a micro-batch of {} sequences x {} tokens is too large for one pass (limit 2^24 tokens); "
              "lower train_micro_batch_size_per_gpu and raise gradient_accumulation_steps",
              config.train_micro_batch_size_per_gpu, seq_len);
  const int stage = config.zero.stage;
  DS_CHECK_AS(ConfigError, stage >= 0 && stage <= 3, "[engine] zero_optimization.stage must be 0-3, found {}",
              stage);
  const zero::ZeroPrecision precision = precision_for(config);
  // This rank's pipeline stage holds a contiguous range of the model's layers (pipe/partition.h).
  nn::LayerRange range;
  if (pp > 1) {
    std::vector<pipe::Layer> layers;
    for (const nn::Gpt2Config::Layer& l : model_config.layers()) layers.push_back({l.type, l.params});
    const std::vector<int> bounds = pipe::partition_layers(layers, config.pipeline.partition, pp);
    range = {bounds[static_cast<size_t>(topology_->coords().pipe)],
             bounds[static_cast<size_t>(topology_->coords().pipe) + 1]};
  }
  model_ = std::make_unique<nn::Gpt2>(model_config, zero::ZeroOptimizer::alignment(dp.size()),
                                      zero::ZeroOptimizer::keeps_full_gradients(stage),
                                      zero::ZeroOptimizer::keeps_full_parameters(stage), precision.params,
                                      precision.grads, tp_group_.get(), range,
                                      nn::ExpertPlacement{ep_group_.get(), zero::ZeroOptimizer::alignment(
                                                                               topology_->expert_data().size())});
  // A pipeline reduces the gradients once the schedule has drained (DeepSpeed's ReduceGrads), not during backward.
  config::ZeroConfig zero_config = config.zero;
  if (pp > 1) zero_config.overlap_comm = false;
  cpu::AdamParams hyper;
  hyper.lr = static_cast<float>(config.optimizer.lr);
  hyper.beta1 = static_cast<float>(config.optimizer.beta1);
  hyper.beta2 = static_cast<float>(config.optimizer.beta2);
  hyper.eps = static_cast<float>(config.optimizer.eps);
  hyper.weight_decay = static_cast<float>(config.optimizer.weight_decay);
  hyper.adam_w_mode = config.optimizer.adam_w_mode;
  hyper.bias_correction = config.optimizer.bias_correction;
  optimizer_ = std::make_unique<zero::ZeroOptimizer>(model_->params(), dp, zero_config, hyper, precision,
                                                    zero::state_store_factory(config.zero, config.aio, comm_->rank()),
                                                    zero::param_swap_options(config.zero, config.aio, comm_->rank()));
  if (model_->has_experts()) {  // Note [Expert gradients]
    expert_optimizer_ = std::make_unique<zero::ZeroOptimizer>(
        model_->expert_params(), topology_->expert_data(), zero_config, hyper, precision,
        zero::state_store_factory(config.zero, config.aio, comm_->rank(), "expert_optimizer"));
    if (ep > 1) expert_optimizer_->set_norm_group(&topology_->expert(), {});
    expert_hooks_ = std::make_unique<ExpertHooks>(*optimizer_, *expert_optimizer_, model_->expert_params());
  }
  if (tp_group_ || pp > 1) {
    // The norm sums over the ranks of one replica, each parameter once: the replicated parameters' gradients are
    // the same on every rank of the model group, so its rank 0 counts them; wte's, summed over the first and the
    // last stage, is counted by the first.
    std::vector<std::pair<int64_t, int64_t>> skip;
    for (const nn::Parameter& p : model_->params().all()) {
      const bool replicated_copy = topology_->coords().model != 0 && !p.tp.split();
      const bool tied_copy = pp > 1 && !model_->has_embedding() && p.name == "transformer.wte.weight";
      if (replicated_copy || tied_copy) skip.emplace_back(p.offset, p.offset + p.numel());
    }
    optimizer_->set_norm_group(&topology_->model_parallel(), std::move(skip));
  }
  if (pp > 1) {
    // wte's tied group: the first and the last stage of each (data, model) coordinate; a collective on the world.
    const comm::Coords at = topology_->coords();
    const bool holds = at.pipe == 0 || at.pipe == pp - 1;
    tied_ = comm_->split(holds ? at.data * config.tensor_parallel_size + at.model : -1, at.pipe);
    pipeline_ = std::make_unique<PipelineExecutor>(StageLayers::of(*model_), optimizer_.get(), topology_->pipe(),
                                                   pipe::schedule_from_name(config.pipeline.schedule),
                                                   static_cast<int>(config.gradient_accumulation_steps), micro_,
                                                   seq_len_);
  }
  if (config.optimizer.type == "lamb") {
    // FusedLamb's trust ratio is one per whole parameter; a tensor-parallel rank holds shares of most of them.
    DS_CHECK_AS(ConfigError, !tp_group_, "[engine] LAMB ({}) with tensor parallelism is not supported: its trust "
                "ratios need whole parameters; use Adam/AdamW, or tensor-parallel size 1", config.source);
    cpu::LambParams lamb;
    lamb.lr = hyper.lr;
    lamb.beta1 = hyper.beta1;
    lamb.beta2 = hyper.beta2;
    lamb.eps = hyper.eps;
    lamb.weight_decay = hyper.weight_decay;
    lamb.bias_correction = hyper.bias_correction;
    lamb.eps_inside_sqrt = config.optimizer.eps_inside_sqrt;
    lamb.max_coeff = static_cast<float>(config.optimizer.max_coeff);
    lamb.min_coeff = static_cast<float>(config.optimizer.min_coeff);
    for (zero::ZeroOptimizer* o : optimizers()) o->use_lamb(lamb);
  }
  if (config.optimizer.compression != config::OptimizerConfig::Compression::none) {
    DS_CHECK_AS(ConfigError, !tp_group_ && pp == 1 && !moe, "[engine] 1-bit Adam and 0/1 Adam ({}) run with data "
                "parallelism only here; tensor, pipeline and expert parallelism with them are not supported yet: use "
                "Adam/AdamW for this layout", config.source);
    optimizer_->use_compression(config.optimizer);
  }
  if (config.fp16.enabled) {
    const config::Fp16Config& f = config.fp16;
    optim::LossScalerParams p;
    if (f.loss_scale > 0) {
      p.mode = optim::LossScalerParams::Mode::fixed;
      p.scale = f.loss_scale;
    } else if (stage == 0) {  // FP16_Optimizer: 2^initial_scale_power, no hysteresis (brief §1.4)
      p.mode = optim::LossScalerParams::Mode::dynamic;
      p.rule = optim::LossScalerParams::Rule::fp16_optimizer;
      p.scale = std::ldexp(1.0, f.initial_scale_power);
      p.window = f.has_dynamic_loss_args ? f.loss_scale_window : 1000;
      p.hysteresis = 1;
      p.min_scale = f.has_dynamic_loss_args ? f.min_loss_scale : 1.0;
    } else if (f.has_dynamic_loss_args) {
      p.mode = optim::LossScalerParams::Mode::dynamic;
      p.scale = std::ldexp(1.0, f.initial_scale_power);
      p.window = f.loss_scale_window;
      p.hysteresis = f.hysteresis;
      p.consecutive_hysteresis = f.consecutive_hysteresis;
      p.min_scale = f.min_loss_scale;
    } else {  // DeepSpeed's ZeRO optimizers without dynamic_loss_args (brief §1.4)
      p.mode = optim::LossScalerParams::Mode::dynamic;
      p.scale = std::ldexp(1.0, 32);
      p.window = 1000;
      p.hysteresis = 1;
      p.min_scale = 1.0;
    }
    scaler_ = optim::LossScaler(p);
  }
  // The same seed on every rank gives identical replicas (at stage 3, each rank keeps its partition of them).
  model_->init_weights(
      seed, [this](int64_t offset, const float* values, int64_t n) { optimizer_->set_parameters(offset, values, n); },
      [this](int64_t offset, const float* values, int64_t n) { expert_optimizer_->set_parameters(offset, values, n); });
  model_->set_hooks(expert_hooks_ ? expert_hooks_.get() : static_cast<nn::ModuleHooks*>(optimizer_.get()));
  configure_checkpointing();
  inputs_.resize(size_t(micro_) * seq_len_);
  targets_.resize(size_t(micro_) * seq_len_);
}

void Engine::configure_checkpointing() {
  const config::ActivationCheckpointingConfig& a = config_.activation_checkpointing;
  // PipelineModule's activation_checkpoint_interval checkpoints the transformer blocks too; here each block is its
  // own checkpoint whatever the interval (the same gradients; memory of one block's activations at a time).
  if (!a.enabled && config_.pipeline.activation_checkpoint_interval > 0) {
    model_->runner().set_checkpointing(true);
    return;
  }
  if (!a.enabled) {
    if (a.present && comm_->rank() == 0)
      log_warning("[engine] the 'activation_checkpointing' block in {} configures checkpointing but does not switch "
                  "it on (as in DeepSpeed); pass --checkpoint-activations to checkpoint the transformer blocks",
                  config_.source);
    return;
  }
  // DeepSpeed asserts both when it configures checkpointing (runtime/activation_checkpointing/checkpointing.py).
  DS_CHECK_AS(ConfigError, !a.contiguous_memory_optimization || a.partition_activations,
              "[engine] 'activation_checkpointing.contiguous_memory_optimization' in {} needs "
              "'partition_activations': true, as in DeepSpeed; set it, or remove contiguous_memory_optimization",
              config_.source);
  DS_CHECK_AS(ConfigError, !a.contiguous_memory_optimization || a.number_checkpoints.has_value(),
              "[engine] 'activation_checkpointing.contiguous_memory_optimization' in {} needs "
              "'number_checkpoints' (the number of checkpointed layers), as in DeepSpeed; set it to the model's "
              "n_layer",
              config_.source);
  const int64_t checkpoints = model_->config().n_layer;
  DS_CHECK_AS(ConfigError,
              !a.contiguous_memory_optimization || !a.number_checkpoints || *a.number_checkpoints >= checkpoints,
              "[engine] activation_checkpointing.number_checkpoints is {} in {}, but the model checkpoints {} "
              "transformer blocks; set number_checkpoints to at least {}",
              a.number_checkpoints.value_or(0), config_.source, checkpoints, checkpoints);
  model_->runner().set_checkpointing(true);
}

Engine::~Engine() {
  if (model_) model_->set_hooks(nullptr);
}

double Engine::current_lr() const { return schedule_.lr(global_steps_ - skipped_steps_); }

double Engine::from_last_stage(double value) {
  comm::Communicator& stages = topology_->pipe();
  if (stages.size() == 1) return value;
  double v = value;  // its 8 bytes as two 32-bit words: the value travels unchanged
  static_assert(sizeof(double) == 2 * sizeof(int32_t));
  stages.broadcast(&v, 2, DType::i32, stages.size() - 1);
  return v;
}

double Engine::average_over_ranks(double value) {  // the model group's ranks hold the same loss
  comm::Communicator& dp = topology_->data();
  if (dp.size() == 1) return value;
  float v = static_cast<float>(value);
  dp.all_reduce(&v, 1, DType::f32);
  return static_cast<double>(v) / dp.size();
}

zero::ZeroPrecision Engine::precision_for(const config::DeepSpeedConfig& c) {
  DS_CHECK_AS(ConfigError, !(c.fp16.enabled && c.bf16.enabled),
              "[engine] both fp16.enabled and bf16.enabled are true in {}; enable one of them", c.source);
  zero::ZeroPrecision p;
  if (c.fp16.enabled) p.params = DType::f16;
  if (c.bf16.enabled) p.params = DType::bf16;
  if (!p.mixed()) {
    DS_CHECK_AS(ConfigError, !c.grad_accum_dtype || *c.grad_accum_dtype == DType::f32,
                "[engine] data_types.grad_accum_dtype = {} in {} needs fp16 or bf16 training; remove it or enable "
                "fp16/bf16", dtype_name(*c.grad_accum_dtype), c.source);
    return p;
  }
  p.grads = c.grad_accum_dtype.value_or(c.bf16.enabled && c.zero.stage == 0 ? DType::f32 : p.params);
  DS_CHECK_AS(ConfigError, p.grads == DType::f32 || p.grads == p.params,
              "[engine] data_types.grad_accum_dtype = {} in {} does not go with {} parameters; use fp32 or {}",
              dtype_name(p.grads), c.source, dtype_name(p.params), dtype_name(p.params));
  return p;
}

StepResult Engine::train_batch(const BatchFn& next_micro_batch) {
  StepResult r;
  const int64_t gas = config_.gradient_accumulation_steps;
  const double scale = scaler_.scale();
  r.loss_scale = scale;
  for (zero::ZeroOptimizer* o : optimizers()) o->begin_batch();
  moe_stats_.clear();
  double loss_sum = 0;
  if (pipeline_) {
    loss_sum = pipeline_->train(next_micro_batch, static_cast<float>(scale / static_cast<double>(gas)));
    optimizer_->begin_micro_batch(true);  // the boundary: the gradients of every micro-batch are in
    optimizer_->end_micro_batch(true);
    if (tied_) optimizer_->sum_tied_gradient(model_->params().get("transformer.wte.weight"), *tied_);
    loss_sum = from_last_stage(loss_sum);  // the last stage computed it
  } else {
    for (int64_t m = 0; m < gas; ++m) {
      next_micro_batch(inputs_.data(), targets_.data());
      ctx_.reset();
      for (zero::ZeroOptimizer* o : optimizers()) o->begin_micro_batch(m + 1 == gas);
      // MoE routing noise: its own for every micro-batch of every rank and step, the same again after a resume.
      Rng noise(seed_ ^ (static_cast<uint64_t>(global_steps_) << 20) ^ (static_cast<uint64_t>(m) << 8) ^
                static_cast<uint64_t>(topology_->coords().data) << 40);
      loss_sum += model_->forward_backward(ctx_, inputs_.data(), targets_.data(), micro_, seq_len_,
                                           static_cast<float>(scale / static_cast<double>(gas)), noise.next_u64(),
                                           model_->has_experts() ? &moe_stats_ : nullptr);
      for (zero::ZeroOptimizer* o : optimizers()) o->end_micro_batch(m + 1 == gas);
    }
  }
  r.loss = average_over_ranks(loss_sum / static_cast<double>(gas));
  r.recompute_seconds = model_->runner().take_recompute_seconds();
  if (model_->has_experts()) report_moe(r);
  const double scaled_norm = grad_norm();
  std::string message;
  r.skipped = scaler_.update(!std::isfinite(scaled_norm), message);  // throws at the minimum scale
  if (!message.empty() && comm_->rank() == 0) log_warning("{} (step {})", message, global_steps_ + 1);
  r.lr = schedule_.lr(global_steps_ - skipped_steps_);
  if (r.skipped) {
    for (zero::ZeroOptimizer* o : optimizers()) o->skip_step();
    ++skipped_steps_;
    r.grad_norm = scaled_norm;
  } else {
    r.grad_norm = scaled_norm / scale;
    const float factor = optim::clip_factor(r.grad_norm, config_.gradient_clipping);
    r.clipped = factor < 1.0f;
    // OneCycle cycles Adam's betas with the rate (Note [LR schedule step convention]).
    if (const auto betas = schedule_.betas(global_steps_ - skipped_steps_))
      for (zero::ZeroOptimizer* o : optimizers())
        o->set_betas(static_cast<float>(betas->first), static_cast<float>(betas->second));
    // Unscales and clips in one pass over the owned gradients (DeepSpeed's unscale_and_clip_grads).
    optimizer_->step(static_cast<float>(r.lr), static_cast<float>(factor / scale));
    if (expert_optimizer_)  // Note [Expert gradients]
      expert_optimizer_->step(static_cast<float>(r.lr),
                              static_cast<float>(factor / scale / topology_->expert().size()));
  }
  ++global_steps_;
  r.tokens = config_.train_batch_size * static_cast<int64_t>(seq_len_);
  return r;
}

std::vector<CheckpointPart> Engine::checkpoint_parts() {
  std::vector<CheckpointPart> parts = {{&model_->params(), optimizer_.get(), false}};
  if (expert_optimizer_) parts.push_back({&model_->expert_params(), expert_optimizer_.get(), true});
  return parts;
}

std::vector<zero::ZeroOptimizer*> Engine::optimizers() {
  if (expert_optimizer_) return {optimizer_.get(), expert_optimizer_.get()};
  return {optimizer_.get()};
}

double Engine::grad_norm() {
  const double dense = optimizer_->grad_norm();
  if (!expert_optimizer_) return dense;
  const double experts = expert_optimizer_->grad_norm() / topology_->expert().size();  // Note [Expert gradients]
  return std::sqrt(dense * dense + experts * experts);
}

void Engine::report_moe(StepResult& r) {
  // One reduction over the data-parallel ranks: assignments, drops, the two losses, then every layer's counts.
  std::vector<float> v = {static_cast<float>(moe_stats_.assignments), static_cast<float>(moe_stats_.dropped),
                          static_cast<float>(moe_stats_.aux_loss), static_cast<float>(moe_stats_.z_loss)};
  for (const std::vector<int64_t>& layer : moe_stats_.routed)
    for (const int64_t n : layer) v.push_back(static_cast<float>(n));
  comm::Communicator& dp = topology_->data();
  if (dp.size() > 1) dp.all_reduce(v.data(), v.size(), DType::f32);
  const double passes = static_cast<double>(config_.gradient_accumulation_steps) * dp.size();
  r.moe_dropped = v[0] > 0 ? v[1] / v[0] : 0.0;
  r.moe_aux_loss = v[2] / passes;
  r.moe_z_loss = v[3] / passes;
  if (v.size() == 4) return;
  const auto counts = std::vector<float>(v.begin() + 4, v.end());
  r.moe_tokens_min = *std::min_element(counts.begin(), counts.end());
  r.moe_tokens_max = *std::max_element(counts.begin(), counts.end());
  double sum = 0;
  for (const float c : counts) sum += c;
  r.moe_tokens_mean = sum / static_cast<double>(counts.size());
}

std::vector<float> Engine::with_experts(const std::vector<float>& dense) {
  // Every weight of the spec at its place: the dense ones from expert-parallel rank 0, each expert from the rank
  // that holds it; the expert group sums (MoE models have no tensor or pipeline parallelism).
  const std::vector<float> experts = expert_optimizer_->full_parameters();
  std::unordered_map<std::string, int64_t> at_whole;
  int64_t whole_numel = 0;
  for (const nn::Gpt2Weight& w : model_->config().weight_spec()) {
    at_whole[w.name] = whole_numel;
    whole_numel += w.numel();
  }
  std::vector<float> whole(static_cast<size_t>(whole_numel), 0.0f);
  auto place = [&](const nn::ParameterStore& store, const std::vector<float>& values) {
    int64_t at = 0;
    for (const nn::Parameter& p : store.all()) {
      std::copy_n(values.begin() + at, p.numel(), whole.begin() + at_whole.at(p.name));
      at += p.numel();
    }
  };
  comm::Communicator& group = topology_->expert();
  if (group.rank() == 0) place(model_->params(), dense);
  place(model_->expert_params(), experts);
  if (group.size() > 1) group.all_reduce(whole.data(), whole.size(), DType::f32);
  return whole;
}

double Engine::eval_loss(const BatchFn& next, int64_t num_batches, int batch_size) {
  DS_CHECK_AS(ConfigError, num_batches > 0, "[engine] evaluation needs at least one batch, got {}", num_batches);
  std::vector<int32_t> in(size_t(batch_size) * seq_len_), tg(size_t(batch_size) * seq_len_);
  double sum = 0;
  for (int64_t i = 0; i < num_batches; ++i) {
    next(in.data(), tg.data());
    if (pipeline_) {
      sum += pipeline_->evaluate(in.data(), tg.data(), batch_size);
      continue;
    }
    eval_ctx_.reset();
    sum += model_->forward_loss(eval_ctx_, in.data(), tg.data(), batch_size, seq_len_);
  }
  if (pipeline_) sum = from_last_stage(sum);
  return average_over_ranks(sum / static_cast<double>(num_batches));
}

std::string Engine::save_checkpoint(const std::string& dir, const std::string& tag, const nlohmann::json& client_state) {
  const std::string t = tag.empty() ? fmt::format("global_step{}", global_steps_) : tag;
  ckpt::CheckpointManifest meta;
  meta.global_steps = global_steps_;
  meta.global_samples = global_steps_ * config_.train_batch_size;
  meta.model = model_->config().to_json();
  meta.config = config_.json;
  // No random numbers are drawn while training (no dropout): the seed made the initial weights, and the data
  // order is the client's loader state.
  meta.engine_state = {{"seed", seed_},
                       {"skipped_steps", skipped_steps_},
                       {"loss_scaler", scaler_.state()},
                       {"params_dtype", dtype_name(optimizer_->precision().params)},
                       {"grads_dtype", dtype_name(optimizer_->precision().grads)}};
  meta.client_state = client_state;
  write_checkpoint(*topology_, dir, t, checkpoint_parts(), std::move(meta));
  return t;
}

nlohmann::json Engine::load_checkpoint(const std::string& dir, const std::string& tag) {
  const ckpt::CheckpointManifest m =
      engine::load_checkpoint(dir, tag, checkpoint_parts(), model_->config().weight_spec().size());
  const comm::TopologyShape& here = topology_->shape();
  if (comm_->rank() == 0 && (m.world != here.data || m.tp != here.model || m.pp != here.pipe ||
                             m.ep != here.expert || m.zero_stage != optimizer_->stage()))
    log_info("[checkpoint] '{}' was saved at data-parallel {} x tensor-parallel {} x pipeline {}{}, ZeRO stage {}; "
             "loaded at data-parallel {} x tensor-parallel {} x pipeline {}{}, stage {}",
             ckpt::checkpoint_tag_dir(dir, tag), m.world, m.tp, m.pp,
             m.ep > 1 ? fmt::format(" (expert-parallel {})", m.ep) : "", m.zero_stage, here.data, here.model,
             here.pipe, here.expert > 1 ? fmt::format(" (expert-parallel {})", here.expert) : "",
             optimizer_->stage());
  global_steps_ = m.global_steps;
  skipped_steps_ = m.engine_state.value("skipped_steps", int64_t{0});
  // The scaler goes on where it was when both runs scale the loss; a run that did not (bf16, fp32) starts fp16
  // from the configured initial scale.
  if (scaler_.active() && m.engine_state.contains("loss_scaler") &&
      m.engine_state.value("params_dtype", std::string()) == "f16") {
    scaler_.restore(m.engine_state.at("loss_scaler"));
  }
  return m.client_state;
}

void Engine::load_weights(const std::string& path) {
  const ckpt::SafetensorsFile file = ckpt::SafetensorsFile::open(path);
  for (const CheckpointPart& part : checkpoint_parts()) {
    for (const nn::Parameter& p : part.store->all()) {
      const std::vector<float> values = ckpt::read_safetensors_f32(
          file, p.name, std::vector<int64_t>(p.full_shape().begin(), p.full_shape().end()),
          "give a file with every parameter of this model under its Hugging Face GPT-2 name (dspeed ckpt consolidate "
          "writes one), for the model --model names");
      if (!p.tp.split()) {
        part.optimizer->set_parameters(p.offset, values.data(), p.numel());
        continue;
      }
      std::vector<float> mine(static_cast<size_t>(p.numel()));
      p.tp.shard(values.data(), mine.data());
      part.optimizer->set_parameters(p.offset, mine.data(), p.numel());
    }
  }
}

std::vector<float> Engine::full_parameters() {
  std::vector<float> local = optimizer_->full_parameters();  // this rank's shapes, in declaration order
  if (expert_optimizer_) return with_experts(local);
  if (topology_->model_parallel().size() == 1) return local;
  // Each rank writes its share into the whole model's layout and the ranks of one replica sum: every element
  // comes from exactly one rank (a replicated parameter from model rank 0, the tied wte from the first stage).
  std::vector<int64_t> at_whole;
  int64_t whole_numel = 0;
  const std::vector<nn::Gpt2Weight> spec = model_->config().weight_spec();
  for (const nn::Gpt2Weight& w : spec) {
    at_whole.push_back(whole_numel);
    whole_numel += w.numel();
  }
  std::vector<float> whole(static_cast<size_t>(whole_numel), 0.0f);
  const bool model_lead = topology_->coords().model == 0;
  int64_t at_local = 0;
  for (const nn::Parameter& p : model_->params().all()) {
    const auto k = static_cast<size_t>(
        std::find_if(spec.begin(), spec.end(), [&](const nn::Gpt2Weight& w) { return w.name == p.name; }) -
        spec.begin());
    const bool tied_copy = !model_->has_embedding() && p.name == "transformer.wte.weight";
    if (!tied_copy && p.tp.split()) {
      p.tp.unshard(local.data() + at_local, whole.data() + at_whole[k]);
    } else if (!tied_copy && model_lead) {
      std::copy_n(local.data() + at_local, p.numel(), whole.data() + at_whole[k]);
    }
    at_local += p.numel();
  }
  topology_->model_parallel().all_reduce(whole.data(), whole.size(), DType::f32);
  return whole;
}

}  // namespace ds::engine
