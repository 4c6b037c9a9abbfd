// ZeRO stages 0-3 through the MPI backend (one rank per process): every rank first trains the single-process stage-0
// reference in-process (self communicator, micro-batch = the global batch), then the Engine on the MPI world at the
// same global batch, and compares per-step losses and final parameters within 1e-5 (relative), checks that all
// ranks hold bitwise the same parameters, and per-rank traffic and memory against the ZeRO formulas within 5%.
// Data and config are those of tests/engine/zero_equivalence_test.cpp, which proves the same on the thread backend
// at world sizes 1, 2 and 4; this file proves the MPI path as a singleton and under `mpirun -np 2/4`.
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/moe_case.h"
#include "common/zero_case.h"
#include "ds/comm/mpi/mpi_comm.h"

namespace ds {
namespace {

using namespace zero_case;

// The world these cases train on: a private duplicate of MPI_COMM_WORLD (make_mpi_world duplicates per call), so
// its traffic counters and staging buffer belong to ZeRO alone. Created on first use, in the same test on every
// rank (all ranks run the cases in the same order), and destroyed at exit before MPI is finalised.
comm::Communicator& zero_world() {
  static std::unique_ptr<comm::Communicator> w = comm::make_mpi_world();
  return *w;
}

// The communicator's staging buffer reports to the tracker that was current when it grew, until the communicator
// is destroyed at exit; so the tracker lives as long as the process (deliberately never deleted).
MemoryTracker& process_tracker() {
  static MemoryTracker* t = new MemoryTracker;
  return *t;
}

// This rank's run: rows of global step s are [4s, 4s+4); rank r reads rows 4s + r*micro .. 4s + (r+1)*micro.
// Every rank makes the same collectives whatever the outcome (no ASSERT between them), so a failure cannot hang.
RunResult run_rank(comm::Communicator& comm, int stage, int micro, const std::string& top = "") {
  MemoryTracker& tracker = process_tracker();
  TrackerScope scope(tracker);
  tracker.reset_peaks();  // the previous run's engine is gone: peaks start from what is still held
  return run_case(comm, stage, micro, 1, false, "", top);
}

// The single-process stage-0 run, computed once per process (by every rank, identically).
const RunResult& reference() {
  static RunResult r = [] {
    std::unique_ptr<comm::Communicator> self = comm::make_self_communicator();
    return run_rank(*self, 0, kGlobalRows);
  }();
  return r;
}

void expect_same_trajectory(const RunResult& got, const std::string& what) {
  zero_case::expect_same_trajectory(got, reference(), what);
}

// Every rank holds bitwise the same parameters: the element-wise max and min over ranks both equal this rank's.
// Collective: every rank calls it with the same count.
void expect_same_on_every_rank(comm::Communicator& comm, const std::vector<float>& params, const std::string& what) {
  std::vector<float> hi = params, lo = params;
  comm.all_reduce(hi.data(), hi.size(), DType::f32, comm::ReduceOp::max);
  comm.all_reduce(lo.data(), lo.size(), DType::f32, comm::ReduceOp::min);
  size_t differing = 0;
  for (size_t i = 0; i < params.size(); ++i) differing += (hi[i] != params[i] || lo[i] != params[i]) ? 1 : 0;
  EXPECT_EQ(differing, 0u) << what << ": parameters that differ between ranks";
}

class ZeroMpi : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
#ifndef DS_WITH_MPI
    GTEST_SKIP() << "built without MPI";
#else
    const int world = zero_world().size();
    if (kGlobalRows % world != 0)
      GTEST_SKIP() << "the global batch of " << kGlobalRows << " sequences does not split over " << world
                   << " ranks; run with 1, 2 or 4";
#endif
  }
};

}  // namespace

TEST_P(ZeroMpi, MatchesSingleProcessStage0AndTheFormulas) {
  const int stage = GetParam();
  comm::Communicator& comm = zero_world();
  const int world = comm.size();
  const std::string what = fmt::format("stage {} on rank {}/{}", stage, comm.rank(), world);
  omp_set_num_threads(std::max(1, omp_get_num_procs() / world));  // ranks are processes on one machine: share cores
  reference();  // first the single-process run (once per process), then the distributed one
  const RunResult got = run_rank(comm, stage, kGlobalRows / world);
  expect_same_trajectory(got, what);
  expect_same_on_every_rank(comm, got.params, what);
  if (world > 1) expect_memory_and_traffic(got, stage, world, what);
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroMpi, ::testing::Values(0, 1, 2, 3),
                         [](const auto& info) { return fmt::format("stage{}", info.param); });

// Tensor parallelism over 2 ranks (processes) and ZeRO-1 over the rest: (tp, dp) = (2, 1) under -np 2, (2, 2)
// under -np 4, against the same single-process run.
TEST_P(ZeroMpi, TensorParallelOverTwoRanksFollowsTheSingleProcessRun) {
  const int stage = GetParam();
  comm::Communicator& comm = zero_world();
  const int world = comm.size();
  if (world % 2 != 0) GTEST_SKIP() << "tensor parallelism over 2 ranks needs an even world";
  const std::string what = fmt::format("tp 2 stage {} on rank {}/{}", stage, comm.rank(), world);
  omp_set_num_threads(std::max(1, omp_get_num_procs() / world));
  reference();
  const RunResult got = run_rank(comm, stage, kGlobalRows / (world / 2), R"(, "tensor_parallel": {"autotp_size": 2})");
  expect_same_trajectory(got, what);
  expect_same_on_every_rank(comm, got.params, what);
}

}  // namespace ds

namespace ds {
namespace {
class PipelineMpi : public ::testing::TestWithParam<std::string> {};
}  // namespace

// Pipeline parallelism over processes: (pp, tp, dp) = (2, 1, 1) under -np 2 and (2, 2, 1) under -np 4, each
// schedule, against the same single-process run; stages exchange activations and gradients by MPI send/recv.
TEST_P(PipelineMpi, TwoStagesFollowTheSingleProcessRun) {
#ifndef DS_WITH_MPI
  GTEST_SKIP() << "built without MPI";
#else
  comm::Communicator& comm = zero_world();
  const int world = comm.size();
  if (world != 2 && world != 4) GTEST_SKIP() << "runs at 2 or 4 ranks";
  const std::string schedule = GetParam();
  const std::string what = fmt::format("pp 2 tp {} {} on rank {}/{}", world / 2, schedule, comm.rank(), world);
  omp_set_num_threads(std::max(1, omp_get_num_procs() / world));
  reference();
  MemoryTracker& tracker = process_tracker();
  TrackerScope scope(tracker);
  const RunResult got = run_case(
      comm, 0, 1, zero_case::kGlobalRows, false, "",
      fmt::format(R"(, "pipeline": {{"stages": 2, "schedule": "{}"}}, "tensor_parallel": {{"autotp_size": {}}})",
                  schedule, world / 2));
  expect_same_trajectory(got, what);
  expect_same_on_every_rank(comm, got.params, what);
#endif
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelineMpi, ::testing::Values("1f1b", "zb-h1"),
                         [](const auto& info) { return info.param == "1f1b" ? "one_f_one_b" : "zb_h1"; });

}  // namespace ds

namespace ds {

// Expert parallelism over processes: ep 2 over dp 2 (-np 2) or dp 4 (-np 4) against the single-process run; tokens
// travel to their experts by MPI all-to-all(v): top-1 capacity-based at ZeRO-2 and top-2 dropless at ZeRO 0, with
// the traffic against the formula from the routed counts.
TEST(MoeMpi, ExpertParallelOverTwoRanksFollowsTheSingleProcessRun) {
#ifndef DS_WITH_MPI
  GTEST_SKIP() << "built without MPI";
#else
  comm::Communicator& comm = zero_world();
  const int world = comm.size();
  if (world != 2 && world != 4) GTEST_SKIP() << "runs at 2 or 4 ranks";
  omp_set_num_threads(std::max(1, omp_get_num_procs() / world));
  for (const auto& [k, dropless, stage] : {std::tuple{1, false, 2}, std::tuple{2, true, 0}}) {
    const nn::Gpt2Config model = moe_case::tiny_moe(k, dropless, 1);
    std::unique_ptr<comm::Communicator> self = comm::make_self_communicator();
    const moe_case::MoeRun ref = moe_case::run_moe(*self, model, 0, zero_case::kGlobalRows);
    nn::Gpt2Config ep2 = model;
    ep2.moe.ep_size = 2;
    const std::string what = fmt::format("top-{} ep 2 stage {} on rank {}/{}", k, stage, comm.rank(), world);
    const moe_case::MoeRun got = moe_case::run_moe(comm, ep2, stage, zero_case::kGlobalRows / world);
    zero_case::expect_same_trajectory(got.run, ref.run, what);
    EXPECT_EQ(got.a2a_bytes_last_step, moe_case::a2a_formula(ep2, got, zero_case::kGlobalRows / world)) << what;
  }
#endif
}

}  // namespace ds

namespace ds {

// ZeRO++ over processes (-np 2 or 4): qwZ, hpZ 2 and qgZ move their int8 weights and int4 gradients as MPI bytes;
// the run follows stage 3's within the quantization error, and the data-parallel group sends a third or less.
TEST(ZeroPlusPlusMpi, FollowsStage3AndSendsAThird) {
#ifndef DS_WITH_MPI
  GTEST_SKIP() << "built without MPI";
#else
  comm::Communicator& comm = zero_world();
  const int world = comm.size();
  if (world != 2 && world != 4) GTEST_SKIP() << "runs at 2 or 4 ranks";
  omp_set_num_threads(std::max(1, omp_get_num_procs() / world));
  const std::string what = fmt::format("ZeRO++ on rank {}/{}", comm.rank(), world);
  const RunResult stage3 = run_case(comm, 3, zero_case::kGlobalRows / world, 1, false);
  const RunResult zeropp = run_case(comm, 3, zero_case::kGlobalRows / world, 1, false,
                                    ", \"zero_quantized_weights\": true, \"zero_hpz_partition_size\": 2, "
                                    "\"zero_quantized_gradients\": true");
  double max_loss = 0;
  for (size_t s = 0; s < stage3.losses.size(); ++s)
    max_loss = std::max(max_loss, std::fabs(zeropp.losses[s] - stage3.losses[s]));
  EXPECT_LT(max_loss, 0.05) << what;
  EXPECT_LE(zeropp.bytes_per_step * 3, stage3.bytes_per_step) << what;
  expect_same_on_every_rank(comm, zeropp.params, what);
#endif
}

}  // namespace ds
