// Tests of LrSchedule against (a) hand-computed values with their arithmetic written out and (b) the formulas of
// brief §1.3 restated independently here, at every step around the warmup and decay boundaries; plus DeepSpeed's
// step convention (Note [LR schedule step convention]): the constructor's value first, then f(L0 + k). OneCycle and
// LRRangeTest against an object that replays DeepSpeed's classes (constructor, step(), get_lr/get_mom) literally.
#include "ds/optim/lr_schedule.h"

#include "ds/core/error.h"
#include "ds/core/log.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace ds {
namespace {

constexpr double kPi = 3.14159265358979323846;

config::SchedulerConfig warmup_lr(double min_lr, double max_lr, int64_t n, config::WarmupType wt) {
  config::SchedulerConfig s;
  s.type = config::SchedulerType::warmup_lr;
  s.name = "WarmupLR";
  s.warmup_min_lr = min_lr;
  s.warmup_max_lr = max_lr;
  s.warmup_num_steps = n;
  s.warmup_type = wt;
  return s;
}

config::SchedulerConfig warmup_decay(double min_lr, double max_lr, int64_t n, int64_t total, config::WarmupType wt) {
  config::SchedulerConfig s = warmup_lr(min_lr, max_lr, n, wt);
  s.type = config::SchedulerType::warmup_decay_lr;
  s.name = "WarmupDecayLR";
  s.total_num_steps = total;
  return s;
}

config::SchedulerConfig warmup_cosine(int64_t n, int64_t total, double min_ratio, double cos_min,
                                      config::WarmupType wt) {
  config::SchedulerConfig s;
  s.type = config::SchedulerType::warmup_cosine_lr;
  s.name = "WarmupCosineLR";
  s.warmup_num_steps = n;
  s.total_num_steps = total;
  s.warmup_min_ratio = min_ratio;
  s.cos_min_ratio = cos_min;
  s.warmup_type = wt;
  return s;
}

// Independent restatement of brief §1.3 (DeepSpeed's get_lr at last_batch_iteration t).
double ref_warmup(int64_t t, int64_t n_raw, config::WarmupType wt) {
  const double n = static_cast<double>(std::max<int64_t>(2, n_raw));
  if (static_cast<double>(t) >= n) return 1.0;
  return wt == config::WarmupType::log ? std::log(t + 1.0) / std::log(n) : t / n;
}
double ref_warmup_lr(int64_t t, double mn, double mx, int64_t n, config::WarmupType wt) {
  return mn + (mx - mn) * ref_warmup(t, n, wt);
}
double ref_decay(int64_t t, double mn, double mx, int64_t n_raw, int64_t total, config::WarmupType wt) {
  const int64_t n = std::max<int64_t>(2, n_raw);
  if (t < n) return mn + (mx - mn) * ref_warmup(t, n, wt);
  const double gamma = std::max(0.0, double(total - t) / std::max(1.0, double(total - n)));
  return mn + (mx - mn) * gamma;
}
double ref_cosine(int64_t t, double base, int64_t n_raw, int64_t total, double r0, double c, config::WarmupType wt) {
  const int64_t n = std::max<int64_t>(2, n_raw);
  if (t < n) return base * (r0 + ref_warmup(t, n, wt) * (1 - r0));
  const double x = double(t - n + 1) / double(total - n);
  return base * std::max(0.0, c + (1 - c) * 0.5 * (1 + std::cos(kPi * x)));
}

// ---- hand-computed values ---------------------------------------------------------------------------------------

TEST(LrSchedule, WarmupLrLogHandValues) {
  const optim::LrSchedule s(warmup_lr(0.0, 1e-3, 10, config::WarmupType::log), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(0), 0.0);                     // ln(1) = 0
  EXPECT_NEAR(s.lr_at_iteration(1), 3.010299956639812e-4, 1e-18);  // 1e-3 * ln2/ln10 = 1e-3 * log10(2)
  EXPECT_NEAR(s.lr_at_iteration(4), 6.989700043360188e-4, 1e-18);  // 1e-3 * log10(5)
  EXPECT_NEAR(s.lr_at_iteration(9), 1e-3, 1e-18);                  // ln(10)/ln(10) = 1, one step before N
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(10), 1e-3);                   // constant after warmup
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(100000), 1e-3);
}

TEST(LrSchedule, WarmupLrLinearHandValues) {
  const optim::LrSchedule s(warmup_lr(1e-4, 1e-3, 10, config::WarmupType::linear),
                            5.0);  // base lr unused after the start
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(0), 1e-4);
  EXPECT_NEAR(s.lr_at_iteration(3), 3.7e-4, 1e-18);  // 1e-4 + 9e-4 * 3/10
  EXPECT_NEAR(s.lr_at_iteration(9), 9.1e-4, 1e-18);  // 1e-4 + 9e-4 * 9/10: linear never reaches max inside
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(10), 1e-3);
}

TEST(LrSchedule, WarmupStepsAreAtLeastTwo) {
  // warmup_num_steps 0 -> N = 2: ln(t+1)/ln(2) gives 0, 1 at t = 0, 1.
  const optim::LrSchedule s(warmup_lr(0.0, 2e-3, 0, config::WarmupType::log), 1e-3);
  EXPECT_EQ(s.warmup_num_steps(), 2);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(1), 2e-3);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(2), 2e-3);
}

TEST(LrSchedule, WarmupDecayHandValues) {
  // N = 10, T = 110: after warmup gamma = (110 - t) / 100.
  const optim::LrSchedule s(warmup_decay(0.0, 1e-3, 10, 110, config::WarmupType::linear), 1e-3);
  EXPECT_NEAR(s.lr_at_iteration(5), 5e-4, 1e-18);    // linear warmup 5/10
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(10), 1e-3);     // (110-10)/100 = 1
  EXPECT_NEAR(s.lr_at_iteration(60), 5e-4, 1e-18);   // 50/100
  EXPECT_NEAR(s.lr_at_iteration(109), 1e-5, 1e-18);  // 1/100
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(110), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(500), 0.0);  // clamped at 0
}

TEST(LrSchedule, WarmupDecayTotalBelowWarmup) {
  // T = 5 < N = 10: max(1, T - N) = 1, so gamma = max(0, 5 - t) = 0 for every t >= 10.
  const optim::LrSchedule s(warmup_decay(0.0, 1e-3, 10, 5, config::WarmupType::linear), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(10), 0.0);
  EXPECT_NEAR(s.lr_at_iteration(4), 4e-4, 1e-18);
}

TEST(LrSchedule, WarmupCosineHandValues) {
  // base 1e-3, N = 10, T = 20, warmup ratio 0 -> 1 linear, cos_min_ratio 0.1.
  const optim::LrSchedule s(warmup_cosine(10, 20, 0.0, 0.1, config::WarmupType::linear), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr_at_iteration(0), 0.0);
  EXPECT_NEAR(s.lr_at_iteration(5), 5e-4, 1e-18);  // ratio 5/10
  // t = 10: x = (10-10+1)/(20-10) = 0.1; (1 + cos(0.1 pi))/2 = (1 + 0.9510565162951535)/2 = 0.9755282581475768;
  // ratio = 0.1 + 0.9 * 0.9755282581475768 = 0.9779754323328191
  EXPECT_NEAR(s.lr_at_iteration(10), 9.779754323328191e-4, 1e-17);
  EXPECT_NEAR(s.lr_at_iteration(14), 5.5e-4, 1e-17);  // x = 0.5: cos = 0, ratio 0.1 + 0.9 * 0.5 = 0.55
  EXPECT_NEAR(s.lr_at_iteration(19), 1e-4, 1e-17);    // x = 1: cos = -1, ratio = cos_min_ratio
  EXPECT_NEAR(s.lr_at_iteration(24), 5.5e-4, 1e-17);  // x = 1.5: not clamped, rises again as in DeepSpeed
}

TEST(LrSchedule, WarmupCosineMinRatioLogWarmup) {
  // warmup_min_ratio 0.2, log warmup over N = 100: t = 9 -> ln(10)/ln(100) = 0.5 -> ratio 0.2 + 0.5 * 0.8 = 0.6
  const optim::LrSchedule s(warmup_cosine(100, 1000, 0.2, 1e-4, config::WarmupType::log), 2e-3);
  EXPECT_NEAR(s.lr_at_iteration(9), 1.2e-3, 1e-17);
  EXPECT_NEAR(s.lr_at_iteration(0), 4e-4, 1e-18);  // ratio = warmup_min_ratio
}

// ---- the formulas at every step around the boundaries -----------------------------------------------------------

TEST(LrSchedule, MatchesFormulasAcrossBoundaries) {
  for (config::WarmupType wt : {config::WarmupType::log, config::WarmupType::linear}) {
    const optim::LrSchedule a(warmup_lr(1e-5, 3e-4, 50, wt), 1e-3);
    const optim::LrSchedule b(warmup_decay(1e-5, 3e-4, 50, 400, wt), 1e-3);
    const optim::LrSchedule c(warmup_cosine(50, 400, 0.05, 0.01, wt), 6e-4);
    for (int64_t t = 0; t < 460; ++t) {
      EXPECT_NEAR(a.lr_at_iteration(t), ref_warmup_lr(t, 1e-5, 3e-4, 50, wt), 1e-15) << t;
      EXPECT_NEAR(b.lr_at_iteration(t), ref_decay(t, 1e-5, 3e-4, 50, 400, wt), 1e-15) << t;
      EXPECT_NEAR(c.lr_at_iteration(t), ref_cosine(t, 6e-4, 50, 400, 0.05, 0.01, wt), 1e-15) << t;
    }
  }
}

// ---- step convention --------------------------------------------------------------------------------------------

TEST(LrSchedule, StepConventionWarmupLr) {
  const optim::LrSchedule s(warmup_lr(1e-4, 1e-3, 10, config::WarmupType::linear), 7e-3);
  EXPECT_DOUBLE_EQ(s.lr(0), 1e-4);                     // constructor sets warmup_min_lr, not the optimizer's lr
  EXPECT_DOUBLE_EQ(s.lr(1), 1e-4);                     // f(0)
  EXPECT_NEAR(s.lr(2), 1.9e-4, 1e-18);                 // f(1) = 1e-4 + 9e-4 * 0.1
  EXPECT_DOUBLE_EQ(s.lr(11), 1e-3);                    // f(10)
  EXPECT_DOUBLE_EQ(s.lr(6), s.lr_at_iteration(5));
}

TEST(LrSchedule, StepConventionCosineStartsAtZero) {
  const optim::LrSchedule s(warmup_cosine(10, 20, 0.3, 0.1, config::WarmupType::linear), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);             // WarmupCosineLR.get_lr() before the start
  EXPECT_NEAR(s.lr(1), 3e-4, 1e-18);          // f(0) = 1e-3 * warmup_min_ratio
}

TEST(LrSchedule, StepConventionResumedIteration) {
  config::SchedulerConfig cfg = warmup_lr(0.0, 1e-3, 10, config::WarmupType::linear);
  cfg.last_batch_iteration = 4;
  const optim::LrSchedule s(cfg, 5e-4);
  EXPECT_DOUBLE_EQ(s.lr(0), 5e-4);            // no constructor update: the optimizer's lr
  EXPECT_NEAR(s.lr(1), 5e-4, 1e-18);          // f(5) = 1e-3 * 5/10
  EXPECT_NEAR(s.lr(3), 7e-4, 1e-18);          // f(7)
}

TEST(LrSchedule, ConstantAndNone) {
  const optim::LrSchedule c = optim::LrSchedule::constant(3e-4);
  const optim::LrSchedule n(config::SchedulerConfig{}, 3e-4);
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{1000}}) {
    EXPECT_DOUBLE_EQ(c.lr(k), 3e-4);
    EXPECT_DOUBLE_EQ(n.lr(k), 3e-4);
  }
  EXPECT_EQ(n.type(), config::SchedulerType::none);
}

TEST(LrSchedule, BuiltFromParsedConfig) {
  set_log_level(LogLevel::error);
  const config::DeepSpeedConfig cfg =
      config::load_config_file(std::string(DS_SOURCE_DIR) + "/examples/ds_config_gpt2_tiny.json", 1);
  set_log_level(LogLevel::info);
  const optim::LrSchedule s(cfg.scheduler, cfg.optimizer.lr);
  EXPECT_EQ(s.type(), config::SchedulerType::warmup_cosine_lr);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);
  const auto& sc = cfg.scheduler;
  for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{50}, int64_t{100}, int64_t{101}, int64_t{102}, int64_t{2500},
                    sc.total_num_steps - 1, sc.total_num_steps}) {
    EXPECT_NEAR(s.lr(k), ref_cosine(k - 1, cfg.optimizer.lr, sc.warmup_num_steps, sc.total_num_steps,
                                    sc.warmup_min_ratio, sc.cos_min_ratio, sc.warmup_type), 1e-15) << k;
  }
  // last step of the run (t = T - 1) lands exactly on cos_min_ratio * lr
  EXPECT_NEAR(s.lr(sc.total_num_steps), sc.cos_min_ratio * cfg.optimizer.lr, 1e-15);
  EXPECT_FALSE(s.describe().empty());
}

TEST(LrSchedule, RejectsIllFormedCosine) {
  EXPECT_THROW(optim::LrSchedule(warmup_cosine(10, 10, 0.0, 0.1, config::WarmupType::log), 1e-3), ConfigError);
}

// DeepSpeed's OneCycle as an object: what the optimizer holds after the constructor and after each step().
struct OneCycleReplay {
  double min_lr, max_lr, decay_lr_rate, min_mom, max_mom, decay_mom_rate;
  double total_size, step_ratio;
  int64_t decay_step_size;
  bool skip_lr_decay, skip_mom_decay;
  int64_t last_batch_iteration = -1;
  double lr = 0, beta1 = 0, beta2 = 0;  // the optimizer's param group
  explicit OneCycleReplay(const config::SchedulerConfig& c) {
    min_lr = c.cycle_min_lr;
    max_lr = c.cycle_max_lr;
    decay_lr_rate = c.decay_lr_rate;
    min_mom = c.cycle_min_mom;
    max_mom = c.cycle_max_mom;
    decay_mom_rate = c.decay_mom_rate;
    const double first = double(c.cycle_first_step_size);
    const double second = c.cycle_second_step_size ? double(*c.cycle_second_step_size) : first;
    total_size = first + second;
    step_ratio = first / total_size;
    decay_step_size = c.decay_step_size;
    skip_lr_decay = skip_mom_decay = decay_step_size == 0;
    if (decay_lr_rate == 0) skip_lr_decay = true;
    if (decay_mom_rate == 0) skip_mom_decay = true;
    lr = min_lr;  // _initialize_lr, _initialize_momentum with last_batch_iteration == -1
    beta1 = min_mom;
    beta2 = 0.99;
  }
  double scale_factor() const {
    const double batch_iteration = double(last_batch_iteration + 1);
    const double cycle = std::floor(1 + batch_iteration / total_size);
    const double x = 1. + batch_iteration / total_size - cycle;
    return x <= step_ratio ? x / step_ratio : (x - 1) / (step_ratio - 1);
  }
  void step() {
    ++last_batch_iteration;
    if (double(last_batch_iteration) < total_size) {
      lr = min_lr + (max_lr - min_lr) * scale_factor();
      beta1 = max_mom - (max_mom - min_mom) * scale_factor();
    } else {
      const double d = double(last_batch_iteration) - total_size + 1;
      lr = skip_lr_decay ? min_lr : min_lr / (1 + decay_lr_rate * (d / double(decay_step_size)));
      beta1 = skip_mom_decay ? max_mom : max_mom * (1 + decay_mom_rate * (d / double(decay_step_size)));
    }
    beta2 = 0.99;
  }
};

TEST(LrSchedule, OneCycleReplaysDeepSpeed) {
  config::SchedulerConfig c;
  c.type = config::SchedulerType::one_cycle;
  c.cycle_min_lr = 1e-4;
  c.cycle_max_lr = 1e-2;
  c.cycle_first_step_size = 6;
  c.cycle_second_step_size = 4;
  c.decay_step_size = 3;
  c.decay_lr_rate = 0.5;
  c.decay_mom_rate = 0.01;
  for (bool decay : {true, false}) {
    if (!decay) c.decay_step_size = 0;
    const optim::LrSchedule s(c, 1e-3);
    OneCycleReplay ds(c);
    for (int64_t k = 0; k < 30; ++k) {
      EXPECT_NEAR(s.lr(k), ds.lr, 1e-15) << "step " << k;
      const auto b = s.betas(k);
      ASSERT_TRUE(b.has_value());
      EXPECT_NEAR(b->first, ds.beta1, 1e-15) << "step " << k;
      EXPECT_EQ(b->second, 0.99);
      ds.step();  // after the optimizer step, as the engine does
    }
  }
  // The cycle's top: after 5 steps the 6th uses b = 6 = S1, the peak lr and the lowest beta1.
  c.decay_step_size = 0;
  const optim::LrSchedule s(c, 1e-3);
  EXPECT_NEAR(s.lr(6), 1e-2, 1e-15);
  EXPECT_NEAR(s.betas(6)->first, 0.8, 1e-15);
  c.cycle_momentum = false;
  EXPECT_FALSE(optim::LrSchedule(c, 1e-3).betas(3).has_value());
}

TEST(LrSchedule, LrRangeTestReplaysDeepSpeed) {
  config::SchedulerConfig c;
  c.type = config::SchedulerType::lr_range_test;
  c.lr_range_test_min_lr = 2e-4;
  c.lr_range_test_step_size = 4;
  c.lr_range_test_step_rate = 0.5;
  for (bool staircase : {false, true}) {
    c.lr_range_test_staircase = staircase;
    const optim::LrSchedule s(c, 1e-3);
    EXPECT_EQ(s.lr(0), 2e-4);  // the constructor's value
    for (int64_t k = 1; k < 12; ++k) {
      // step() sets last_batch_iteration = k - 1; interval = (k - 1 + 1) / step_size (floored with staircase)
      double interval = double(k) / 4.0;
      if (staircase) interval = std::floor(interval);
      EXPECT_NEAR(s.lr(k), 2e-4 * (1 + 0.5 * interval), 1e-18) << "step " << k;
    }
    EXPECT_FALSE(s.betas(2).has_value());
  }
}

}  // namespace
}  // namespace ds
