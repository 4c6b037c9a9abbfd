// Mixed precision on the thread backend with the ZeRO equivalence case (tests/common/zero_case.h):
// - fp16 at stages 0-3, world 2: the tracked model states follow DeepSpeed's mixed-precision formula (2 bytes of
//   parameters, 2 of gradients, 12 of optimizer state: fp32 master + two moments), partitioned per stage, and the
//   run follows the single-process fp16 run within 1e-5 (16-bit gradient reductions round differently);
// - bf16 follows the fp32 run closely, and stage 0 accumulates bf16 gradients in fp32 (DeepSpeed's default);
// - fp16 loss scaling: starting at 2^32 the first steps overflow, are skipped (parameters unchanged, the learning
//   rate schedule not advanced) and halve the scale until steps go through; an overflow at the minimum scale
//   stops the run with DeepSpeed's message.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdio>

#include "common/local_ranks.h"
#include "common/zero_case.h"
#include "ds/comm/local/local_comm.h"
#include "ds/zero/zero_optimizer.h"

using namespace ds;
using namespace ds::zero_case;

namespace {

// The equivalence case's config with a precision block (and a warmup schedule, so that a skipped step shows in
// the learning rate).
std::string mp_config(int stage, int world, const std::string& precision) {
  return fmt::format(R"({{"train_micro_batch_size_per_gpu": {}, "gradient_accumulation_steps": 1,
      "optimizer": {{"type": "AdamW", "params": {{"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-3, "weight_decay": 0.1}}}},
      "scheduler": {{"type": "WarmupLR", "params": {{"warmup_min_lr": 0, "warmup_max_lr": 3e-3, "warmup_num_steps": 10,
                                                     "warmup_type": "linear"}}}},
      "gradient_clipping": 1.0 {},
      "zero_optimization": {{"stage": {}, "stage3_max_reuse_distance": 0}}}})",
                     kGlobalRows / world, precision.empty() ? "" : ", " + precision, stage);
}

struct MpRun {
  std::vector<engine::StepResult> steps;
  std::vector<float> params;
  int64_t peak_param = 0, peak_grad = 0, peak_optimizer = 0;
};

MpRun run_mp(int world, int stage, const std::string& precision, int steps = kSteps) {
  return ds::testing::on_local_ranks<MpRun>(world, [&](comm::Communicator& comm) {
    MpRun out;
    engine::Engine engine(tiny(), config::parse_config(mp_config(stage, world, precision), world, "mp_test"), kT, &comm,
                          42);
    const int micro = kGlobalRows / world;
    int step = 0;
    auto next = [&](int32_t* in, int32_t* tg) { table().fill(kGlobalRows * step + comm.rank() * micro, micro, in, tg); };
    for (step = 0; step < steps; ++step) out.steps.push_back(engine.train_batch(next));
    out.params = engine.optimizer().full_parameters();
    const MemoryTracker& tracker = current_tracker();  // this rank's (on_local_ranks scopes one per rank)
    out.peak_param = tracker.peak(Tier::device, Category::param);
    out.peak_grad = tracker.peak(Tier::device, Category::grad);
    out.peak_optimizer = tracker.peak(Tier::device, Category::optimizer);
    return out;
  })[0];
}

double max_rel_loss_diff(const MpRun& a, const MpRun& b) {
  double worst = 0;
  for (size_t i = 0; i < std::min(a.steps.size(), b.steps.size()); ++i)
    worst = std::max(worst, std::fabs(a.steps[i].loss - b.steps[i].loss) / std::fabs(b.steps[i].loss));
  return worst;
}

constexpr const char* kFp16 = R"("fp16": {"enabled": true, "initial_scale_power": 12})";
constexpr const char* kBf16 = R"("bf16": {"enabled": true})";

TEST(MixedPrecision, Fp16ModelStatesFollowTheFormulaAtEveryStage) {
  const double psi = static_cast<double>(tiny().num_params());
  const MpRun ref = run_mp(1, 0, kFp16);
  for (int stage : {0, 1, 2, 3}) {
    const MpRun r = run_mp(2, stage, kFp16);
    const double n = 2;
    const double want_param = stage == 3 ? 2 * psi / n : 2 * psi;
    const double want_grad = stage >= 2 ? 2 * psi / n : 2 * psi;
    const double want_opt = stage >= 1 ? 12 * psi / n : 12 * psi;
    const std::string what = fmt::format("fp16 stage {} world 2", stage);
    EXPECT_NEAR(r.peak_param, want_param, 0.05 * want_param) << what;
    EXPECT_NEAR(r.peak_grad, want_grad, 0.05 * want_grad) << what;
    EXPECT_NEAR(r.peak_optimizer, want_opt, 0.05 * want_opt) << what;
    const double total = r.peak_param + r.peak_grad + r.peak_optimizer;
    const double formula = stage == 0 ? 16 * psi : stage == 1 ? 4 * psi + 12 * psi / n
                                                 : stage == 2 ? 2 * psi + 14 * psi / n
                                                              : 16 * psi / n;
    EXPECT_NEAR(total, formula, 0.05 * formula) << what;
    // Two ranks round their halves of each gradient to 16 bits before summing, one process rounds the sum; still
    // within the fp32 equivalence bound here (measured 6e-7).
    const double diff = max_rel_loss_diff(r, ref);
    std::printf("%s: max relative loss difference to one process %.2g\n", what.c_str(), diff);
    EXPECT_LE(diff, 1e-5) << what;
  }
}

TEST(MixedPrecision, Bf16TracksFp32AndStage0AccumulatesInFp32) {
  const MpRun fp32 = run_mp(1, 0, "");
  const MpRun bf16 = run_mp(1, 0, kBf16);
  std::printf("bf16 vs fp32 over %d steps: max relative loss difference %.2g\n", kSteps,
              max_rel_loss_diff(bf16, fp32));
  EXPECT_LE(max_rel_loss_diff(bf16, fp32), 1e-3);
  const double psi = static_cast<double>(tiny().num_params());
  EXPECT_NEAR(bf16.peak_param, 2 * psi, 0.05 * 2 * psi);
  EXPECT_NEAR(bf16.peak_grad, 4 * psi, 0.05 * 4 * psi);  // bf16 at stage 0: fp32 gradient accumulation
  for (const engine::StepResult& s : bf16.steps) EXPECT_FALSE(s.skipped);
  const MpRun bf16_z2 = run_mp(2, 2, kBf16);
  EXPECT_NEAR(bf16_z2.peak_grad, psi, 0.05 * psi);  // stage 2: bf16 gradients, halved
  EXPECT_LE(max_rel_loss_diff(bf16_z2, fp32), 1e-3);
}

TEST(MixedPrecision, Fp16OverflowSkipsTheStepAndHalvesTheScale) {
  // No dynamic-loss keys: DeepSpeed's ZeRO optimizers start at 2^32 with hysteresis 1.
  const MpRun r = run_mp(1, 2, R"("fp16": {"enabled": true})", kSteps);
  const MpRun first = run_mp(1, 2, R"("fp16": {"enabled": true})", 1);
  const MpRun none = run_mp(1, 2, R"("fp16": {"enabled": true})", 0);
  ASSERT_TRUE(r.steps[0].skipped);
  EXPECT_EQ(r.steps[0].loss_scale, 4294967296.0);
  EXPECT_TRUE(first.params == none.params) << "a skipped step changed the parameters";
  int skipped = 0;
  while (skipped < static_cast<int>(r.steps.size()) && r.steps[skipped].skipped) {
    EXPECT_EQ(r.steps[skipped].loss_scale, std::ldexp(1.0, 32 - skipped));
    ++skipped;
  }
  ASSERT_LT(skipped + 4, static_cast<int>(r.steps.size())) << "too few steps went through";
  EXPECT_GT(skipped, 1);
  // The steps that went through follow the schedule from its start, as a run that never skips (bf16).
  const MpRun bf16 = run_mp(1, 2, kBf16, kSteps - skipped);
  for (int k = 0; k < kSteps - skipped; ++k) {
    EXPECT_FALSE(r.steps[skipped + k].skipped) << "step " << skipped + k;
    EXPECT_EQ(r.steps[skipped + k].lr, bf16.steps[k].lr) << "step " << skipped + k;
  }
  EXPECT_GT(r.steps.back().lr, 0.0);
  EXPECT_LT(r.steps.back().loss, r.steps[skipped].loss);
}

// Without ZeRO, DeepSpeed runs FP16_Optimizer: it starts at 2^initial_scale_power (2^16 by default) and has no
// hysteresis, so each overflow halves the scale even when the block sets "hysteresis" (which the config then lists
// as ignored).
TEST(MixedPrecision, Fp16AtStageZeroFollowsFp16Optimizer) {
  const MpRun plain = run_mp(1, 0, R"("fp16": {"enabled": true})", 1);
  EXPECT_EQ(plain.steps[0].loss_scale, 65536.0);
  const MpRun r = run_mp(1, 0, R"("fp16": {"enabled": true, "initial_scale_power": 32, "hysteresis": 4})", kSteps);
  int skipped = 0;
  while (skipped < static_cast<int>(r.steps.size()) && r.steps[skipped].skipped) {
    EXPECT_EQ(r.steps[skipped].loss_scale, std::ldexp(1.0, 32 - skipped)) << "overflow " << skipped;
    ++skipped;
  }
  EXPECT_GT(skipped, 1);
  ASSERT_LT(skipped, static_cast<int>(r.steps.size()));
  const config::DeepSpeedConfig c =
      config::parse_config(mp_config(0, 1, R"("fp16": {"enabled": true, "hysteresis": 4})"), 1, "mp_test");
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].find("'fp16.hysteresis' (no hysteresis at ZeRO stage 0"), std::string::npos)
      << c.warnings[0];
}

TEST(MixedPrecision, OverflowAtTheMinimumScaleStopsTheRun) {
  try {
    run_mp(1, 1, R"("fp16": {"enabled": true, "initial_scale_power": 32, "min_loss_scale": 4294967296,
                            "hysteresis": 1})", 2);
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already at minimum"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

// A token seen 512 times adds 512 rows of ones to one embedding row. Summed in fp32 first, the bf16 gradient is
// exactly 512; added to the bf16 store one row at a time it would stall at 256 (bf16 keeps 8 significant bits).
TEST(MixedPrecision, RepeatedTokensAreSummedBeforeRoundingTo16Bits) {
  for (int stage : {1, 2}) {
    nn::ParameterStore store;
    store.add_sliced("w", {4, 8}, 4);
    store.materialize(16, zero::ZeroOptimizer::keeps_full_gradients(stage), true, DType::bf16, DType::bf16);
    auto comm = comm::make_self_communicator();
    config::ZeroConfig zero;
    zero.stage = stage;
    zero::ZeroOptimizer opt(store, *comm, zero, cpu::AdamParams{}, zero::ZeroPrecision{DType::bf16, DType::bf16});
    opt.begin_batch();
    const std::vector<int32_t> ids(512, 1);
    const std::vector<float> rows(512 * 8, 1.0f);
    opt.accumulate_row_grads(*store.find("w"), ids.data(), rows.data(), 512);
    opt.end_micro_batch(true);
    EXPECT_DOUBLE_EQ(opt.grad_norm(), 512.0 * std::sqrt(8.0)) << "stage " << stage;
  }
}

}  // namespace
