// Engine: accumulation, clipping, schedule and optimizer step.
#include "ds/runtime/engine.h"

#include <algorithm>
#include <climits>

namespace ds {

Engine::Engine(Gpt2& model, const DeepSpeedConfig& config, int seq_len)
    : model_(model),
      config_(config),
      micro_(static_cast<int>(std::min<int64_t>(config.train_micro_batch_size_per_gpu, INT32_MAX))),
      seq_len_(seq_len),
      schedule_(config.scheduler, config.optimizer.lr) {
  DS_CHECK_AS(ConfigError, seq_len > 0 && seq_len <= model.config().block_size,
              "[engine] sequence length {} must be between 1 and the model's block_size {}", seq_len,
              model.config().block_size);
  DS_CHECK_AS(ConfigError, config.train_micro_batch_size_per_gpu * seq_len <= (int64_t(1) << 24),
              "[engine] a micro-batch of {} sequences x {} tokens is too large for one pass (limit 2^24 tokens); "
              "lower train_micro_batch_size_per_gpu and raise gradient_accumulation_steps",
              config.train_micro_batch_size_per_gpu, seq_len);
  cpu::AdamParams hyper;
  hyper.lr = static_cast<float>(config.optimizer.lr);
  hyper.beta1 = static_cast<float>(config.optimizer.beta1);
  hyper.beta2 = static_cast<float>(config.optimizer.beta2);
  hyper.eps = static_cast<float>(config.optimizer.eps);
  hyper.weight_decay = static_cast<float>(config.optimizer.weight_decay);
  hyper.adam_w_mode = config.optimizer.adam_w_mode;
  hyper.bias_correction = config.optimizer.bias_correction;
  optimizer_ = std::make_unique<AdamW>(model.params().flat_params(), model.params().flat_grads(), hyper);
  inputs_.resize(size_t(micro_) * seq_len_);
  targets_.resize(size_t(micro_) * seq_len_);
}

double Engine::current_lr() const { return schedule_.lr(global_steps_); }

StepResult Engine::train_batch(const BatchFn& next_micro_batch) {
  StepResult r;
  const int64_t gas = config_.gradient_accumulation_steps;
  model_.params().zero_grad();
  double loss_sum = 0;
  for (int64_t m = 0; m < gas; ++m) {
    next_micro_batch(inputs_.data(), targets_.data());
    ctx_.reset();
    loss_sum += model_.forward_backward(ctx_, inputs_.data(), targets_.data(), micro_, seq_len_,
                                        1.0f / static_cast<float>(gas));
  }
  r.loss = loss_sum / static_cast<double>(gas);
  r.grad_norm = grad_norm(model_.params().flat_grads());
  const float factor = clip_factor(r.grad_norm, config_.gradient_clipping);
  r.clipped = factor < 1.0f;
  r.lr = schedule_.lr(global_steps_);
  optimizer_->step(static_cast<float>(r.lr), factor);
  ++global_steps_;
  r.tokens = gas * micro_ * static_cast<int64_t>(seq_len_);
  return r;
}

double Engine::eval_loss(const BatchFn& next, int64_t num_batches, int batch_size) {
  DS_CHECK_AS(ConfigError, num_batches > 0, "[engine] evaluation needs at least one batch, got {}", num_batches);
  std::vector<int32_t> in(size_t(batch_size) * seq_len_), tg(size_t(batch_size) * seq_len_);
  double sum = 0;
  for (int64_t i = 0; i < num_batches; ++i) {
    next(in.data(), tg.data());
    eval_ctx_.reset();
    sum += model_.forward_loss(eval_ctx_, in.data(), tg.data(), batch_size, seq_len_);
  }
  return num_batches > 0 ? sum / static_cast<double>(num_batches) : 0.0;
}

}  // namespace ds
