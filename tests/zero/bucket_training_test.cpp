// Training with gradient buckets smaller than a gather unit (Note [Gradient buckets]: every transformer block and
// wte slice of the tiny GPT-2 is then reduced in packed pieces) keeps the ZeRO equivalence case of
// tests/common/zero_case.h: at world 2, stages 0-3, with and without overlap_comm, per-step losses and final
// parameters within 1e-5 of the single-process stage-0 run, and model-state memory and traffic at the formulas.
// bf16 at stage 2 goes through the 16-bit pieces as well.
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>

#include "common/zero_case.h"
#include "common/local_ranks.h"
#include "ds/comm/local/local_comm.h"

namespace ds {
namespace {

using namespace zero_case;

constexpr int64_t kSmallBucket = 50000;  // a tiny block is 198,272 elements, a wte slice 196,608

std::vector<RunResult> run_world(int world, int stage, bool overlap, const std::string& extra) {
  return ds::testing::on_local_ranks<RunResult>(
      world, [&](comm::Communicator& comm) { return run_case(comm, stage, kGlobalRows / world, 1, overlap, extra); });
}

TEST(GradientBuckets, SmallerThanAUnitKeepTheTrajectoryMemoryAndTraffic) {
  const RunResult reference = run_world(1, 0, false, "")[0];
  const std::string extra = fmt::format(R"(, "reduce_bucket_size": {})", kSmallBucket);
  for (int stage : {0, 1, 2, 3}) {
    for (bool overlap : {false, true}) {
      const std::string what = fmt::format("stage {} overlap_comm {} reduce_bucket_size {}", stage, overlap,
                                           kSmallBucket);
      const auto results = run_world(2, stage, overlap, extra);
      for (const RunResult& r : results) {
        expect_same_trajectory(r, reference, what);
        expect_memory_and_traffic(r, stage, 2, what);
      }
      EXPECT_EQ(results[0].params, results[1].params) << what;
    }
  }
}

TEST(GradientBuckets, Bf16PiecesFollowTheFp32Run) {
  // bf16 rounds the weights, so the bound is mixed precision's (tests/engine/mixed_precision_test.cpp), not 1e-5.
  const RunResult fp32 = run_world(1, 0, false, "")[0];
  // The extra keys end the zero_optimization block and add a bf16 block after it.
  const auto bf16 = run_world(2, 2, true, fmt::format(R"(, "reduce_bucket_size": {}}}, "bf16": {{"enabled": true)",
                                                      kSmallBucket));
  ASSERT_EQ(bf16[0].losses.size(), fp32.losses.size());
  for (size_t i = 0; i < fp32.losses.size(); ++i)
    EXPECT_NEAR(bf16[0].losses[i], fp32.losses[i], 1e-3 * std::fabs(fp32.losses[i])) << "step " << i;
  EXPECT_EQ(bf16[0].params, bf16[1].params);
}

}  // namespace
}  // namespace ds
