// DeepSpeed's learning-rate schedules evaluated in closed form; the formulas and the step convention are in
// Note [LR schedule step convention] (lr_schedule.h). Arithmetic is in double, as in Python, so the values match
// DeepSpeed's to the last bit or two; the caller narrows to float when it hands the rate to the optimizer kernel.
#include "ds/optim/lr_schedule.h"

#include "ds/core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ds::optim {

LrSchedule::LrSchedule(double lr) : base_lr_(lr) {}

LrSchedule LrSchedule::constant(double lr) { return LrSchedule(lr); }

LrSchedule::LrSchedule(const config::SchedulerConfig& config, double base_lr)
    : config_(config), base_lr_(base_lr), warmup_(std::max<int64_t>(2, config.warmup_num_steps)) {
  DS_CHECK_AS(ConfigError, config.last_batch_iteration >= -1,
              "[lr_schedule] last_batch_iteration must be -1 (fresh start) or a batch index; found {}",
              config.last_batch_iteration);
  if (config.type == config::SchedulerType::warmup_decay_lr || config.type == config::SchedulerType::warmup_cosine_lr) {
    DS_CHECK_AS(ConfigError, config.total_num_steps >= 1,
                "[lr_schedule] {} needs total_num_steps >= 1; found {}", config::scheduler_type_name(config.type),
                config.total_num_steps);
  }
  if (config.type == config::SchedulerType::warmup_cosine_lr) {
    DS_CHECK_AS(ConfigError, config.total_num_steps > warmup_,
                "[lr_schedule] WarmupCosineLR needs total_num_steps ({}) > warmup_num_steps ({})",
                config.total_num_steps, warmup_);
  }
}

double LrSchedule::warmup_gamma(int64_t t) const {
  if (config_.warmup_type == config::WarmupType::linear) return static_cast<double>(t) / static_cast<double>(warmup_);
  // DeepSpeed stores inverse_log_warm_up = 1 / ln(N) and multiplies; keep the same operation order.
  const double inverse_log_warm_up = 1.0 / std::log(static_cast<double>(warmup_));
  return inverse_log_warm_up * std::log(static_cast<double>(t + 1));
}

double LrSchedule::cycle_scale(int64_t t) const {
  const double first = static_cast<double>(config_.cycle_first_step_size);
  const double second = static_cast<double>(config_.cycle_second_step_size.value_or(config_.cycle_first_step_size));
  const double total = first + second;
  const double ratio = first / total;
  const double batch = static_cast<double>(t + 1);
  const double cycle = std::floor(1 + batch / total);
  const double x = 1. + batch / total - cycle;
  return x <= ratio ? x / ratio : (x - 1) / (ratio - 1);
}

namespace {

int64_t cycle_total(const config::SchedulerConfig& c) {
  return c.cycle_first_step_size + c.cycle_second_step_size.value_or(c.cycle_first_step_size);
}

}  // namespace

std::optional<std::pair<double, double>> LrSchedule::betas(int64_t steps_taken) const {
  DS_ASSERT(steps_taken >= 0, "betas() needs steps_taken >= 0, got {}", steps_taken);
  if (config_.type != config::SchedulerType::one_cycle || !config_.cycle_momentum) return std::nullopt;
  constexpr double kBeta2 = 0.99;
  if (steps_taken == 0) {
    if (config_.last_batch_iteration != -1) return std::nullopt;
    return std::make_pair(config_.cycle_min_mom, kBeta2);
  }
  const int64_t t = config_.last_batch_iteration + steps_taken;
  const double lo = config_.cycle_min_mom, hi = config_.cycle_max_mom;
  if (t < cycle_total(config_)) return std::make_pair(hi - (hi - lo) * cycle_scale(t), kBeta2);
  if (config_.decay_step_size == 0 || config_.decay_mom_rate == 0) return std::make_pair(hi, kBeta2);
  const double interval =
      static_cast<double>(t - cycle_total(config_) + 1) / static_cast<double>(config_.decay_step_size);
  return std::make_pair(hi * (1 + config_.decay_mom_rate * interval), kBeta2);
}

double LrSchedule::lr_at_iteration(int64_t t) const {
  DS_ASSERT(t >= 0, "lr_at_iteration needs an iteration >= 0, got {}", t);
  const double min_lr = config_.warmup_min_lr;
  const double delta = config_.warmup_max_lr - config_.warmup_min_lr;
  switch (config_.type) {
    case config::SchedulerType::none:
      return base_lr_;
    case config::SchedulerType::warmup_lr: {
      const double gamma = t < warmup_ ? warmup_gamma(t) : 1.0;
      return min_lr + delta * gamma;
    }
    case config::SchedulerType::warmup_decay_lr: {
      double gamma;
      if (t < warmup_) {
        gamma = warmup_gamma(t);
      } else {
        const double T = static_cast<double>(config_.total_num_steps);
        gamma = std::max(0.0, (T - static_cast<double>(t)) / std::max(1.0, T - static_cast<double>(warmup_)));
      }
      return min_lr + delta * gamma;
    }
    case config::SchedulerType::warmup_cosine_lr: {
      double ratio;
      if (t < warmup_) {
        ratio = config_.warmup_min_ratio + warmup_gamma(t) * (1.0 - config_.warmup_min_ratio);
      } else {
        const double real_last_step = static_cast<double>(t - warmup_ + 1);
        const double real_total_steps = static_cast<double>(config_.total_num_steps - warmup_);
        const double c = config_.cos_min_ratio;
        const double cosine = (1.0 + std::cos(std::numbers::pi * real_last_step / real_total_steps)) / 2.0;
        ratio = std::max(0.0, c + (1.0 - c) * cosine);
      }
      return base_lr_ * ratio;
    }
    case config::SchedulerType::one_cycle: {
      const double lo = config_.cycle_min_lr, hi = config_.cycle_max_lr;
      if (t < cycle_total(config_)) return lo + (hi - lo) * cycle_scale(t);
      if (config_.decay_step_size == 0 || config_.decay_lr_rate == 0) return lo;
      const double interval =
          static_cast<double>(t - cycle_total(config_) + 1) / static_cast<double>(config_.decay_step_size);
      return lo / (1 + config_.decay_lr_rate * interval);
    }
    case config::SchedulerType::lr_range_test: {
      double interval = static_cast<double>(t + 1) / static_cast<double>(config_.lr_range_test_step_size);
      if (config_.lr_range_test_staircase) interval = std::floor(interval);
      return config_.lr_range_test_min_lr * (1 + config_.lr_range_test_step_rate * interval);
    }
  }
  return base_lr_;
}

double LrSchedule::initial_lr() const {
  if (config_.type == config::SchedulerType::none || config_.last_batch_iteration != -1) return base_lr_;
  if (config_.type == config::SchedulerType::warmup_cosine_lr) return 0.0;  // its get_lr() before the start
  if (config_.type == config::SchedulerType::one_cycle) return config_.cycle_min_lr;        // set by its constructor
  if (config_.type == config::SchedulerType::lr_range_test) return config_.lr_range_test_min_lr;  // likewise
  return config_.warmup_min_lr;                                      // WarmupLR's get_lr() before the start
}

double LrSchedule::lr(int64_t steps_taken) const {
  DS_ASSERT(steps_taken >= 0, "lr() needs steps_taken >= 0, got {}", steps_taken);
  if (steps_taken == 0) return initial_lr();
  return lr_at_iteration(config_.last_batch_iteration + steps_taken);
}

std::string LrSchedule::describe() const {
  const char* warm = config_.warmup_type == config::WarmupType::log ? "log" : "linear";
  switch (config_.type) {
    case config::SchedulerType::none:
      return fmt::format("constant lr {}", base_lr_);
    case config::SchedulerType::warmup_lr:
      return fmt::format("WarmupLR {} -> {} over {} steps ({} warmup)", config_.warmup_min_lr, config_.warmup_max_lr,
                         warmup_, warm);
    case config::SchedulerType::warmup_decay_lr:
      return fmt::format("WarmupDecayLR {} -> {} over {} steps ({} warmup), then linear to 0 at step {}",
                         config_.warmup_min_lr, config_.warmup_max_lr, warmup_, warm, config_.total_num_steps);
    case config::SchedulerType::warmup_cosine_lr:
      return fmt::format("WarmupCosineLR lr {} x ratio {} -> 1 over {} steps ({} warmup), cosine to {} at step {}",
                         base_lr_, config_.warmup_min_ratio, warmup_, warm, config_.cos_min_ratio,
                         config_.total_num_steps);
    case config::SchedulerType::one_cycle:
      return fmt::format("OneCycle {} -> {} -> {} over {} + {} steps{}", config_.cycle_min_lr, config_.cycle_max_lr,
                         config_.cycle_min_lr, config_.cycle_first_step_size,
                         config_.cycle_second_step_size.value_or(config_.cycle_first_step_size),
                         config_.cycle_momentum ? fmt::format(", beta1 {} <-> {}", config_.cycle_max_mom,
                                                              config_.cycle_min_mom)
                                                : "");
    case config::SchedulerType::lr_range_test:
      return fmt::format("LRRangeTest from {} x (1 + {} per {} steps){}", config_.lr_range_test_min_lr,
                         config_.lr_range_test_step_rate, config_.lr_range_test_step_size,
                         config_.lr_range_test_staircase ? ", staircase" : "");
  }
  return "?";
}

}  // namespace ds::optim
