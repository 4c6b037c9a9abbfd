// The pipeline executor (pipeline_executor.h).
#include "ds/engine/pipeline_executor.h"

#include <chrono>

#include "ds/core/error.h"

namespace ds::engine {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

StageLayers StageLayers::of(nn::Gpt2& model) {
  StageLayers l;
  l.runner = &model.runner();
  l.width = model.config().n_embd;
  l.check_tokens = [&model](const int32_t* inputs, const int32_t* targets, int B, int T) {
    model.check_tokens(inputs, B, T, false);
    return model.check_tokens(targets, B, T, true);
  };
  return l;
}

PipelineExecutor::PipelineExecutor(const StageLayers& layers, zero::ZeroOptimizer* optimizer,
                                   comm::Communicator& stages, pipe::Schedule kind, int micro_batches,
                                   int micro_batch_size, int seq_len)
    : layers_(layers),
      optimizer_(optimizer),
      stages_(stages),
      B_(micro_batch_size),
      T_(seq_len),
      C_(layers.width),
      stage_(stages.rank()),
      last_(stages.size() - 1),
      schedule_(pipe::make_schedule(kind, stages.size(), micro_batches)),
      slot_of_(static_cast<size_t>(micro_batches), -1) {}

PipelineExecutor::Timing PipelineExecutor::take_timing() {
  const Timing t = timing_;
  timing_ = {};
  return t;
}

PipelineExecutor::Slot& PipelineExecutor::take_slot(int micro) {
  size_t i = 0;
  while (i < slot_busy_.size() && slot_busy_[i]) ++i;
  if (i == slots_.size()) {
    slots_.push_back(std::make_unique<Slot>());
    slot_busy_.push_back(false);
  }
  slot_busy_[i] = true;
  slot_of_[static_cast<size_t>(micro)] = static_cast<int>(i);
  Slot& slot = *slots_[i];
  finish_sends(slot);  // its buffers are about to be reused
  slot.ctx.reset();
  return slot;
}

void PipelineExecutor::finish_sends(Slot& slot) {
  const auto t0 = Clock::now();
  for (const comm::WorkPtr& w : slot.sends) w->wait();
  slot.sends.clear();
  timing_.waiting += since(t0);
}

void PipelineExecutor::forward(int micro, const BatchFn& next, float grad_scale, double& loss_sum) {
  Slot& slot = take_slot(micro);
  const int64_t n = int64_t(B_) * T_;
  slot.inputs.resize(static_cast<size_t>(n));
  slot.targets.resize(static_cast<size_t>(n));
  next(slot.inputs.data(), slot.targets.data());
  slot.count = layers_.check_tokens(slot.inputs.data(), slot.targets.data(), B_, T_);
  slot.pass = nn::Pass{.inputs = slot.inputs.data(), .targets = slot.targets.data(), .B = B_, .T = T_,
                       .grad_scale = grad_scale / static_cast<float>(slot.count)};
  slot.ctx.training = true;
  Tensor x;
  if (stage_ > 0) {
    x = slot.ctx.act().alloc({n, C_});
    const auto t0 = Clock::now();
    stages_.recv(x.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ - 1, micro);
    timing_.waiting += since(t0);
  }
  const auto t0 = Clock::now();
  nn::ModuleRunner& runner = *layers_.runner;
  const Tensor y = runner.forward(slot.ctx, slot.pass, 0, runner.size(), x);
  timing_.busy += since(t0);
  if (stage_ < last_) {
    slot.sends.push_back(stages_.send_async(y.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ + 1, micro));
  } else {
    loss_sum += slot.pass.loss_sum / static_cast<double>(slot.count);
  }
}

void PipelineExecutor::backward(int micro, bool split) {
  Slot& slot = *slots_[static_cast<size_t>(slot_of_[static_cast<size_t>(micro)])];
  const int64_t n = int64_t(B_) * T_;
  Tensor dy;
  if (stage_ < last_) {
    dy = slot.ctx.act().alloc({n, C_});
    const auto t0 = Clock::now();
    stages_.recv(dy.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ + 1, micro);
    timing_.waiting += since(t0);
  }
  const auto t0 = Clock::now();
  nn::ModuleRunner& runner = *layers_.runner;
  slot.ctx.defer_weight_grads = split;
  const Tensor dx = runner.backward(slot.ctx, slot.pass, 0, runner.size(), dy);
  slot.ctx.defer_weight_grads = false;
  if (stage_ > 0) {  // the input gradient leaves the scratch arena for a buffer that outlives the send
    Tensor out = slot.ctx.act().alloc({n, C_});
    out.copy_from(dx);
    slot.sends.push_back(stages_.send_async(out.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ - 1, micro));
  }
  timing_.busy += since(t0);
  if (!split) slot_busy_[static_cast<size_t>(slot_of_[static_cast<size_t>(micro)])] = false;
}

void PipelineExecutor::weights(int micro) {
  const int s = slot_of_[static_cast<size_t>(micro)];
  const auto t0 = Clock::now();
  layers_.runner->backward_weights(slots_[static_cast<size_t>(s)]->ctx);
  timing_.busy += since(t0);
  slot_busy_[static_cast<size_t>(s)] = false;
}

double PipelineExecutor::train(const BatchFn& next, float grad_scale) {
  double loss_sum = 0;
  for (const pipe::Instr& in : schedule_[static_cast<size_t>(stage_)]) {
    if (optimizer_) optimizer_->begin_micro_batch(false);  // the boundary's reduction comes after the schedule
    switch (in.op) {
      case pipe::Op::forward: forward(in.micro, next, grad_scale, loss_sum); break;
      case pipe::Op::backward: backward(in.micro, false); break;
      case pipe::Op::backward_input: backward(in.micro, true); break;
      case pipe::Op::backward_weight: weights(in.micro); break;
    }
    if (optimizer_) optimizer_->end_micro_batch(false);
  }
  for (auto& slot : slots_) finish_sends(*slot);
  return loss_sum;
}

double PipelineExecutor::evaluate(const int32_t* inputs, const int32_t* targets, int rows) {
  const int64_t n = int64_t(rows) * T_;
  const int64_t count = layers_.check_tokens(inputs, targets, rows, T_);
  eval_ctx_.reset();
  eval_ctx_.training = false;
  nn::Pass pass{.inputs = inputs, .targets = targets, .B = rows, .T = T_};
  Tensor x;
  if (stage_ > 0) {
    x = eval_ctx_.act().alloc({n, C_});
    stages_.recv(x.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ - 1, 0);
  }
  nn::ModuleRunner& runner = *layers_.runner;
  const Tensor y = runner.forward(eval_ctx_, pass, 0, runner.size(), x);
  if (stage_ < last_) {
    stages_.send(y.raw(), static_cast<size_t>(n * C_), DType::f32, stage_ + 1, 0);
    return 0.0;
  }
  return pass.loss_sum / static_cast<double>(count);
}

}  // namespace ds::engine
