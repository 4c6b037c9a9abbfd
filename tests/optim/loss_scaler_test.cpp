// LossScaler against DeepSpeed's DynamicLossScaler rules, replayed by hand: hysteresis before halving, doubling
// after `window` clean steps since the last overflow, consecutive_hysteresis refilling, the error at the minimum
// scale, static scaling skipping overflowed steps without changing, no scaling at all, and a state round trip.
// The stage-0 rule against a transcription of FP16_Optimizer._update_scale (fp16/fused_optimizer.py).
#include <gtest/gtest.h>

#include <algorithm>

#include "ds/core/error.h"
#include "ds/optim/loss_scaler.h"

namespace {

using ds::optim::LossScaler;
using ds::optim::LossScalerParams;

LossScalerParams dynamic(double scale, int64_t window, int hysteresis, double min_scale = 1.0) {
  LossScalerParams p;
  p.mode = LossScalerParams::Mode::dynamic;
  p.scale = scale;
  p.window = window;
  p.hysteresis = hysteresis;
  p.min_scale = min_scale;
  return p;
}

TEST(LossScaler, HysteresisThenHalvingThenGrowthAfterWindow) {
  LossScaler s(dynamic(65536, 3, 2));
  std::string msg;
  EXPECT_TRUE(s.update(true, msg));  // hysteresis 2 -> 1, scale kept
  EXPECT_EQ(s.scale(), 65536);
  EXPECT_NE(msg.find("but hysteresis is 2. Reducing hysteresis to 1"), std::string::npos) << msg;
  EXPECT_TRUE(s.update(true, msg));  // hysteresis used up: halve
  EXPECT_EQ(s.scale(), 32768);
  EXPECT_NE(msg.find("Attempted loss scale: 65536, reducing to 32768"), std::string::npos) << msg;
  EXPECT_TRUE(s.update(true, msg));  // hysteresis is not refilled by an overflow: halve again
  EXPECT_EQ(s.scale(), 16384);
  // Overflow at iteration 2; clean iterations 3, 4, 5: (5 - 2) % 3 == 0 doubles and refills the hysteresis.
  EXPECT_FALSE(s.update(false, msg));
  EXPECT_FALSE(s.update(false, msg));
  EXPECT_EQ(s.scale(), 16384);
  EXPECT_FALSE(s.update(false, msg));
  EXPECT_EQ(s.scale(), 32768);
  EXPECT_TRUE(msg.empty());
  EXPECT_TRUE(s.update(true, msg));  // hysteresis back at 2
  EXPECT_EQ(s.scale(), 32768);
}

TEST(LossScaler, FirstGrowthAfterWindowCleanSteps) {
  LossScaler s(dynamic(8, 4, 2));
  std::string msg;
  for (int i = 0; i < 3; ++i) s.update(false, msg);
  EXPECT_EQ(s.scale(), 8);
  s.update(false, msg);  // (3 - (-1)) % 4 == 0
  EXPECT_EQ(s.scale(), 16);
}

TEST(LossScaler, ConsecutiveHysteresisRefillsOnEveryCleanStep) {
  LossScalerParams p = dynamic(1024, 1000, 2);
  p.consecutive_hysteresis = true;
  LossScaler s(p);
  std::string msg;
  s.update(true, msg);   // hysteresis 1
  s.update(false, msg);  // refilled to 2
  s.update(true, msg);   // 2 -> 1, no halving
  EXPECT_EQ(s.scale(), 1024);
}

TEST(LossScaler, OverflowAtTheMinimumStopsTheRun) {
  LossScaler s(dynamic(2, 1000, 1, 1.0));
  std::string msg;
  s.update(true, msg);
  EXPECT_EQ(s.scale(), 1);
  try {
    s.update(true, msg);
    FAIL() << "expected an error at the minimum scale";
  } catch (const ds::Error& e) {
    EXPECT_NE(std::string(e.what()).find("already at minimum"), std::string::npos) << e.what();
  }
}

TEST(LossScaler, StaticAndNone) {
  LossScalerParams p;
  p.mode = LossScalerParams::Mode::fixed;
  p.scale = 128;
  LossScaler fixed(p);
  std::string msg;
  EXPECT_TRUE(fixed.update(true, msg));
  EXPECT_FALSE(fixed.update(false, msg));
  EXPECT_EQ(fixed.scale(), 128);
  LossScaler none;
  EXPECT_FALSE(none.active());
  EXPECT_FALSE(none.update(true, msg));
  EXPECT_EQ(none.scale(), 1);
}

TEST(LossScaler, StateRoundTrip) {
  LossScaler a(dynamic(4096, 5, 2));
  std::string msg;
  a.update(true, msg);
  a.update(false, msg);
  LossScaler b(dynamic(4096, 5, 2));
  b.restore(a.state());
  for (bool overflow : {false, false, false, true, true, false}) {
    a.update(overflow, msg);
    b.update(overflow, msg);
    EXPECT_EQ(a.scale(), b.scale());
  }
  EXPECT_THROW(b.restore(nlohmann::json{{"scale", 2.0}}), ds::Error);
}

// FP16_Optimizer._update_scale, transcribed: no hysteresis; growth when the stable interval is a positive multiple
// of the window.
struct Fp16OptimizerReference {
  double cur_scale, min_scale;
  int64_t window, cur_iter = 0, last_overflow_iter = -1;
  void update(bool skip) {
    if (skip) {
      cur_scale = std::max(cur_scale / 2, min_scale);
      last_overflow_iter = cur_iter;
    } else {
      const int64_t stable_interval = (cur_iter - last_overflow_iter) - 1;
      if (stable_interval > 0 && stable_interval % window == 0) cur_scale *= 2;
    }
    ++cur_iter;
  }
};

TEST(LossScaler, Fp16OptimizerRuleAtStageZero) {
  LossScalerParams p = dynamic(65536, 3, 1);
  p.rule = LossScalerParams::Rule::fp16_optimizer;
  p.hysteresis = 2;  // ignored by this rule: every overflow halves
  LossScaler s(p);
  Fp16OptimizerReference ref{65536, 1.0, 3};
  std::string msg;
  const bool pattern[] = {true, true, false, false, false, false, false, true, false, false, false, false,
                          false, false, false, true, false, false, false, false};
  for (bool overflow : pattern) {
    EXPECT_EQ(s.update(overflow, msg), overflow);
    ref.update(overflow);
    EXPECT_EQ(s.scale(), ref.cur_scale) << "iteration " << ref.cur_iter - 1;
  }
  // The rules differ: DynamicLossScaler grows one step earlier after an overflow.
  LossScaler zero_rule(dynamic(65536, 3, 1));
  for (bool overflow : {true, false, false, false}) zero_rule.update(overflow, msg);
  LossScaler stage0(p);
  for (bool overflow : {true, false, false, false}) stage0.update(overflow, msg);
  EXPECT_EQ(zero_rule.scale(), 65536);
  EXPECT_EQ(stage0.scale(), 32768);
}

}  // namespace
