// Loss scaling for fp16 training with DeepSpeed's semantics (fp16/loss_scaler.py, DynamicLossScaler):
//   - the loss gradient is multiplied by scale() before backward; the optimizer divides it out;
//   - a step whose gradients hold inf or NaN is skipped (the caller does not step the optimizer or the LR
//     schedule) and, when dynamic, the scale is halved once the hysteresis is used up (else the hysteresis drops
//     by one); at the minimum scale an overflow stops the run;
//   - after `window` clean steps since the last overflow the scale doubles and the hysteresis refills (with
//     consecutive_hysteresis, every clean step refills it).
// A static scale (fp16.loss_scale > 0) never changes but overflowed steps are still skipped. bf16 and fp32 use
// no scaling (scale 1, nothing skipped).
// Without ZeRO, DeepSpeed's FP16_Optimizer keeps its own scaler (fp16/fused_optimizer.py, _update_scale): no
// hysteresis (every overflow halves the scale), and the scale doubles when (iter - last_overflow - 1) is a positive
// multiple of the window, one step later than DynamicLossScaler. Rule::fp16_optimizer follows it; at its minimum
// scale it too stops the run instead of skipping every step from then on.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace ds::optim {

struct LossScalerParams {
  enum class Mode : uint8_t { none, fixed, dynamic } mode = Mode::none;
  enum class Rule : uint8_t { dynamic_loss_scaler, fp16_optimizer } rule = Rule::dynamic_loss_scaler;
  double scale = 1.0;            // the static scale, or the initial dynamic scale
  int64_t window = 1000;         // clean steps before the scale doubles
  int hysteresis = 2;            // overflows tolerated before the scale halves
  bool consecutive_hysteresis = false;
  double min_scale = 1.0;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerParams& p = {});

  double scale() const { return scale_; }
  bool active() const { return p_.mode != LossScalerParams::Mode::none; }
  // Called once per step with whether the gradients overflowed. Returns true when the step must be skipped; then
  // `message` holds DeepSpeed's log line. Throws ds::Error when the scale is already at its minimum.
  bool update(bool overflow, std::string& message);

  // For checkpoints: the scale, the hysteresis left, and the step counters.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

 private:
  LossScalerParams p_;
  double scale_;
  int hysteresis_left_;
  int64_t iter_ = 0, last_overflow_iter_ = -1;
};

}  // namespace ds::optim
