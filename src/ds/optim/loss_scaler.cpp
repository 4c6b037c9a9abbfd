// Loss scaling (see loss_scaler.h).
#include "ds/optim/loss_scaler.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds::optim {

LossScaler::LossScaler(const LossScalerParams& p)
    : p_(p), scale_(p.mode == LossScalerParams::Mode::none ? 1.0 : p.scale), hysteresis_left_(p.hysteresis) {
  DS_CHECK_AS(ConfigError, scale_ > 0 && p.window >= 1 && p.hysteresis >= 1 && p.min_scale > 0,
              "[fp16] loss scaling needs a positive scale, window >= 1, hysteresis >= 1 and min_loss_scale > 0 "
              "(got {}, {}, {}, {})", scale_, p.window, p.hysteresis, p.min_scale);
}

bool LossScaler::update(bool overflow, std::string& message) {
  message.clear();
  if (p_.mode == LossScalerParams::Mode::none) return false;
  if (p_.mode == LossScalerParams::Mode::fixed) {
    if (overflow) message = fmt::format("[fp16] OVERFLOW! Skipping step. Static loss scale: {}", scale_);
    ++iter_;
    return overflow;
  }
  const bool fp16_optimizer = p_.rule == LossScalerParams::Rule::fp16_optimizer;
  if (overflow) {
    if (hysteresis_left_ == 1 || fp16_optimizer) {
      DS_CHECK_AS(Error, scale_ > p_.min_scale,
                  "[fp16] Current loss scale already at minimum ({}) - cannot decrease scale anymore; the gradients "
                  "overflow even unscaled. Stopping the run: lower the learning rate, enable gradient_clipping, or "
                  "train in bf16", scale_);
      const double next = std::max(scale_ / 2, p_.min_scale);
      message = fmt::format("[fp16] OVERFLOW! Skipping step. Attempted loss scale: {}, reducing to {}", scale_,
                            next);
      scale_ = next;
    } else {
      message = fmt::format("[fp16] OVERFLOW! Skipping step. Attempted loss scale: {}, but hysteresis is {}. "
                            "Reducing hysteresis to {}", scale_, hysteresis_left_, hysteresis_left_ - 1);
      --hysteresis_left_;
    }
    last_overflow_iter_ = iter_;
  } else if (fp16_optimizer) {
    const int64_t stable = iter_ - last_overflow_iter_ - 1;
    if (stable > 0 && stable % p_.window == 0) scale_ *= 2;
  } else {
    if (p_.consecutive_hysteresis) hysteresis_left_ = p_.hysteresis;
    if ((iter_ - last_overflow_iter_) % p_.window == 0) {
      if (!p_.consecutive_hysteresis) hysteresis_left_ = p_.hysteresis;
      scale_ *= 2;
    }
  }
  ++iter_;
  return overflow;
}

nlohmann::json LossScaler::state() const {
  return {{"scale", scale_}, {"hysteresis_left", hysteresis_left_}, {"iter", iter_},
          {"last_overflow_iter", last_overflow_iter_}};
}

void LossScaler::restore(const nlohmann::json& s) {
  auto integer = [&](const char* key) -> int64_t {
    const std::optional<int64_t> v = s.is_object() && s.contains(key) ? json_integer<int64_t>(s[key]) : std::nullopt;
    DS_CHECK_AS(IoError, v.has_value(), "[fp16] the saved loss-scaler state {} has no integer '{}'; the checkpoint "
                "is damaged", json_excerpt(s), key);
    return *v;
  };
  DS_CHECK_AS(IoError, s.is_object() && s.contains("scale") && s["scale"].is_number() && s["scale"].get<double>() > 0,
              "[fp16] the saved loss-scaler state {} has no positive 'scale'; the checkpoint is damaged",
              json_excerpt(s));
  const int64_t hysteresis = integer("hysteresis_left");
  DS_CHECK_AS(IoError, hysteresis >= 0 && hysteresis <= std::numeric_limits<int>::max(),
              "[fp16] the saved loss-scaler state has hysteresis_left {}; the checkpoint is damaged", hysteresis);
  scale_ = s["scale"].get<double>();
  hysteresis_left_ = static_cast<int>(hysteresis);
  iter_ = integer("iter");
  last_overflow_iter_ = integer("last_overflow_iter");
}

}  // namespace ds::optim
