// ds::Engine: one model + one DeepSpeed config -> train_batch / eval. It owns the optimizer (flat AdamW),
// the learning-rate schedule, gradient accumulation over gradient_accumulation_steps micro-batches, gradient
// clipping (DeepSpeed's formula, fused into the optimizer step as a gradient scale) and the activation stash.
// Single process for now; the data-parallel/ZeRO paths attach here later.
#pragma once

#include <functional>
#include <memory>

#include "ds/nn/models/gpt2.h"
#include "ds/optim/adamw.h"
#include "ds/optim/lr_schedule.h"
#include "ds/runtime/config.h"

namespace ds {

struct StepResult {
  double loss = 0;       // mean over the batch's micro-batches
  double grad_norm = 0;  // before clipping
  double lr = 0;         // the learning rate this step used
  bool clipped = false;
  int64_t tokens = 0;
};

class Engine {
 public:
  // Fills one micro-batch: inputs and targets, each train_micro_batch_size_per_gpu x seq_len int32.
  using BatchFn = std::function<void(int32_t* inputs, int32_t* targets)>;

  Engine(Gpt2& model, const DeepSpeedConfig& config, int seq_len);

  StepResult train_batch(const BatchFn& next_micro_batch);
  // Mean loss over `num_batches` micro-batches drawn from `next`, without gradients.
  double eval_loss(const BatchFn& next, int64_t num_batches, int batch_size);

  int64_t global_steps() const { return global_steps_; }
  double current_lr() const;
  Gpt2& model() { return model_; }
  const DeepSpeedConfig& config() const { return config_; }
  int micro_batch_size() const { return micro_; }
  int seq_len() const { return seq_len_; }
  AdamW& optimizer() { return *optimizer_; }

 private:
  Gpt2& model_;
  DeepSpeedConfig config_;
  int micro_;
  int seq_len_;
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  Ctx ctx_;
  Ctx eval_ctx_;
  std::vector<int32_t> inputs_, targets_;
  int64_t global_steps_ = 0;
};

}  // namespace ds
