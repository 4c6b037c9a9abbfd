// Learning-rate schedules of DeepSpeed's runtime/lr_schedules.py — WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle
// (with its momentum), LRRangeTest — and a constant one, as a pure function of how many optimizer steps have been
// taken (no hidden counter to save/restore). The decision that matters is the step convention, including DeepSpeed's
// first-step behaviour: see the Note below.
#pragma once

#include "ds/config/config.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace ds::optim {

// Note [LR schedule step convention]
// DeepSpeed (0.16.5) runs optimizer.step() and *then* lr_scheduler.step() (engine.py::_take_model_step), and skips
// both on fp16-overflow steps. scheduler.step() increments last_batch_iteration (starting from the constructor's
// last_batch_iteration, default -1) and writes get_lr() into the optimizer. Hence, with L0 = last_batch_iteration:
//   * the first optimizer step uses the lr set by the constructor: when L0 == -1, WarmupLR and WarmupDecayLR set
//     warmup_min_lr and WarmupCosineLR sets 0.0 (PR #6597, "Add first Step in LR Schedulers"); when L0 != -1 the
//     constructor sets nothing and the optimizer's own lr (base_lr) is used;
//   * after k >= 1 completed steps the next step uses f(L0 + k), where f(t) is get_lr() at last_batch_iteration t:
//       WarmupLR       f(t) = min + (max - min) * g(t),   g(t) = ln(t+1)/ln(N) (log) or t/N (linear) for t < N,
//                                                         g(t) = 1 afterwards
//       WarmupDecayLR  f(t) = min + (max - min) * g(t),   g as above for t < N, then max(0, (T - t) / max(1, T - N))
//       WarmupCosineLR f(t) = base_lr * ratio(t),  ratio = r0 + (1 - r0) * g(t) for t < N, then
//                      max(0, c + (1 - c) * (1 + cos(pi * (t - N + 1) / (T - N))) / 2)
//     with N = max(2, warmup_num_steps), T = total_num_steps, r0 = warmup_min_ratio, c = cos_min_ratio.
// So with L0 = -1 the first two steps both run at the minimum (f(0) is the minimum for both warmup types).
// WarmupCosineLR is not clamped past T: as in DeepSpeed, the cosine rises again if training runs longer than T.
// OneCycle (S1, S2 = the cycle's first and second step sizes, S = S1 + S2, r = S1 / S, b = t + 1):
//       for t < S: x = 1 + b/S - floor(1 + b/S), s = x/r if x <= r else (x - 1)/(r - 1),
//                  f(t) = lo + (hi - lo) * s,  beta1(t) = mom_hi - (mom_hi - mom_lo) * s
//       after:     d = t - S + 1, f(t) = lo / (1 + decay_lr_rate * d / decay_step_size),
//                  beta1(t) = mom_hi * (1 + decay_mom_rate * d / decay_step_size) (each plain lo / mom_hi when its
//                  rate or decay_step_size is 0); its constructor sets lo and beta1 = mom_lo. With cycle_momentum,
//                  beta2 is 0.99 throughout (DeepSpeed writes the pair (beta1, 0.99) into the optimizer).
// LRRangeTest: f(t) = min_lr * (1 + step_rate * i), i = (t + 1) / step_size, floored with staircase; its
//       constructor sets min_lr.
class LrSchedule {
 public:
  // A constant learning rate (no "scheduler" block).
  static LrSchedule constant(double lr);
  // From the config's scheduler block; base_lr is optimizer.params.lr. SchedulerType::none gives constant(base_lr).
  LrSchedule(const config::SchedulerConfig& config, double base_lr);

  // The learning rate of the optimizer step that follows `steps_taken` completed (not skipped) optimizer steps,
  // exactly as DeepSpeed would set it. steps_taken >= 0; lr(0) is the first step's rate.
  double lr(int64_t steps_taken) const;
  // DeepSpeed's get_lr() at last_batch_iteration = iteration (>= 0): the value scheduler.step() writes.
  double lr_at_iteration(int64_t iteration) const;
  // lr(0): the rate the scheduler's constructor leaves in the optimizer.
  double initial_lr() const;
  // OneCycle with cycle_momentum: the Adam betas of the step that follows `steps_taken` completed steps, set the
  // same way as the rate. nullopt: the optimizer's own betas (every other schedule, or a resumed constructor).
  std::optional<std::pair<double, double>> betas(int64_t steps_taken) const;

  config::SchedulerType type() const { return config_.type; }
  double base_lr() const { return base_lr_; }
  int64_t warmup_num_steps() const { return warmup_; }  // effective: max(2, warmup_num_steps)
  std::string describe() const;

 private:
  explicit LrSchedule(double lr);  // constant
  double warmup_gamma(int64_t t) const;  // g(t) for t < N
  double cycle_scale(int64_t t) const;   // OneCycle's s at iteration t < S

  config::SchedulerConfig config_;
  double base_lr_ = 0.0;
  int64_t warmup_ = 2;
};

}  // namespace ds::optim
