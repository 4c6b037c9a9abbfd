// MPI backend: the collective checks of tests/comm/collective_checks.h on the MPI world, written to pass as a
// singleton (world of 1, how gtest_discover_tests runs each case) and under `mpirun -np 2/4` (cmake/mpi_tests.cmake,
// the whole binary per rank; every rank runs the cases in the same order, so collectives line up). The injected-
// failure case runs only with DS_TEST_INJECT_FAILURE_RANK set: that rank fails and aborts, and the job must die.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "comm/collective_checks.h"
#include "comm/onebit_reference.h"
#include "ds/comm/comm_factory.h"
#include "ds/comm/mpi/mpi_comm.h"
#include "ds/comm/onebit.h"

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

comm::Communicator& world() {
  static std::unique_ptr<comm::Communicator> w = comm::make_mpi_world();
  return *w;
}

// Every case needs the MPI backend; a build without MPI skips them (and checks its error instead, below).
class CommMpi : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef DS_WITH_MPI
    GTEST_SKIP() << "built without MPI";
#endif
  }
};

#ifndef DS_WITH_MPI
TEST(CommNoMpi, MakeMpiWorldSaysHowToGetMpi) {
  try {
    comm::make_mpi_world();
    FAIL() << "make_mpi_world worked in a build without MPI";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("built without MPI; install libopenmpi-dev"), std::string::npos);
  }
}
#endif

TEST_F(CommMpi, WorldMatchesTheLauncher) {
  comm::Communicator& c = world();
  EXPECT_EQ(c.backend(), "mpi");
  if (comm::launched_under_mpi()) {
    EXPECT_EQ(c.rank(), comm::mpi_env_rank());
    if (comm::mpi_env_world() > 0) { EXPECT_EQ(c.size(), comm::mpi_env_world()); }
  } else {
    EXPECT_EQ(c.size(), 1);  // singleton
    EXPECT_EQ(c.rank(), 0);
  }
}

TEST_F(CommMpi, AllReduce) {
  comm::Communicator& c = world();
  for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max, comm::ReduceOp::min}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{5003}}) {
      test::check_all_reduce<float>(c, op, n);
      test::check_all_reduce<int32_t>(c, op, n);
    }
  }
}

TEST_F(CommMpi, ReduceScatter) {
  comm::Communicator& c = world();
  for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max, comm::ReduceOp::min}) {
    for (bool in_place : {false, true}) {
      test::check_reduce_scatter<float>(c, op, 1031, in_place);
      test::check_reduce_scatter<int32_t>(c, op, 3, in_place);
    }
  }
  // Blocks longer than one ring segment (2^20 elements) go around the ring in several pieces; 0 is a no-op.
  test::check_reduce_scatter<float>(c, comm::ReduceOp::sum, (size_t{1} << 20) * 2 + 7, false);
  test::check_reduce_scatter<int32_t>(c, comm::ReduceOp::max, (size_t{1} << 20) + 1, true);
  test::check_reduce_scatter<float>(c, comm::ReduceOp::sum, 0, false);
}

TEST_F(CommMpi, HalfPrecisionReductions) {
  test::check_half_collectives(world(), DType::bf16);
  test::check_half_collectives(world(), DType::f16);
}

TEST_F(CommMpi, AllGather) {
  comm::Communicator& c = world();
  for (bool in_place : {false, true}) {
    test::check_all_gather<float>(c, 777, in_place);
    test::check_all_gather<int32_t>(c, 1, in_place);
  }
}

TEST_F(CommMpi, BroadcastFromEveryRoot) {
  test::check_broadcast<float>(world(), 333);
  test::check_broadcast<int32_t>(world(), 1);
}

TEST_F(CommMpi, AllToAllVWithUnevenCounts) {
  test::check_all_to_all_v<float>(world());
  test::check_all_to_all_v<int32_t>(world());
}

// The 1-bit all-reduce over MPI: the reference's result on every rank over rounds of error feedback, and its
// packed signs as real bytes on the wire (u8 all_to_all and all_gather).
TEST_F(CommMpi, OneBitAllReduceFollowsTheReference) {
  comm::Communicator& c = world();
  const int W = c.size();
  const std::vector<int64_t> sizes = {5, 64, 1000, 333};
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  test::ReferenceOneBit reference(W, sizes, 256);
  comm::OneBitAllReduce onebit(c, sizes, 256);
  const comm::CommStats before = c.stats();
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<float>> inputs;
    for (int w = 0; w < W; ++w) inputs.push_back(test::random_vector(static_cast<size_t>(total), 100 * round + w));
    std::vector<float> expected = W == 1 ? inputs[0] : reference.run(inputs);
    std::vector<float> buffer = inputs[static_cast<size_t>(c.rank())];
    onebit.run(buffer.data());
    for (size_t i = 0; i < buffer.size(); ++i)
      ASSERT_NEAR(buffer[i], expected[i], 1e-5f * (1 + std::fabs(expected[i]))) << "round " << round << " at " << i;
  }
  const auto a2a = static_cast<size_t>(comm::Collective::all_to_all);
  EXPECT_EQ(c.stats().bytes[a2a] - before.bytes[a2a], W == 1 ? 0 : 3 * onebit.message_bytes() * (W - 1));
}

TEST_F(CommMpi, SendRecvRing) { test::check_send_recv(world()); }

TEST_F(CommMpi, AsyncCompletesInIssueOrder) { test::check_async_order(world()); }

TEST_F(CommMpi, TrafficCounters) { test::check_stats(world()); }

TEST_F(CommMpi, Split) { test::check_split(world()); }

// MPI chooses its own reduction order, so the float sum is compared with a tolerance; but repeats and ranks
// must agree bitwise.
TEST_F(CommMpi, AllReduceIsRepeatableAndAgreesAcrossRanks) {
  comm::Communicator& c = world();
  constexpr size_t n = 100003;
  std::vector<float> got = test::check_repeatable_all_reduce(c, n);
  std::vector<double> reference(n, 0.0);
  for (int r = 0; r < c.size(); ++r) {
    std::mt19937 rng(1234 + r);  // as check_repeatable_all_reduce draws them
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (size_t i = 0; i < n; ++i) reference[i] += dist(rng);
  }
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(got[i] - reference[i]));
  EXPECT_LT(worst, 1e-5 * c.size());
}

TEST_F(CommMpi, FactoryAutoPicksMpiUnderALauncher) {
  auto c = comm::make_world_communicator("auto");
  EXPECT_EQ(c->backend(), comm::launched_under_mpi() ? "mpi" : "self");
  EXPECT_EQ(c->size(), world().size());
  EXPECT_EQ(c->rank(), world().rank());
  EXPECT_EQ(comm::make_world_communicator("self")->size(), 1);
}

// Not a speed assertion: prints the bus bandwidth of a 64 MiB all_reduce for the record.
TEST_F(CommMpi, AllReduceBusBandwidth64MiB) {
  comm::Communicator& c = world();
  constexpr size_t n = (64u << 20) / sizeof(float);
  std::vector<float> x(n, 1.f);
  std::vector<double> times;
  for (int it = 0; it < 6; ++it) {
    c.barrier();
    const auto t0 = Clock::now();
    c.all_reduce(x.data(), n, DType::f32);
    if (it > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  EXPECT_EQ(x[n - 1], std::pow(static_cast<float>(c.size()), 6.f));
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  const int W = c.size();
  const double bus = 2.0 * (W - 1) / W * static_cast<double>(n * sizeof(float)) / t / 1e9;
  if (c.rank() == 0) {
    std::printf("[ bandwidth ] mpi all_reduce 64 MiB, %d ranks: median %.1f ms, bus bandwidth %.2f GB/s\n", W,
                t * 1e3, bus);
  }
}

// Run by the mpi.comm.abort ctest (WILL_FAIL): rank DS_TEST_INJECT_FAILURE_RANK fails while the others wait in
// an all_reduce; its abort() must end the whole job quickly (mpirun exits non-zero) instead of hanging.
TEST_F(CommMpi, InjectedFailureAbortsTheJob) {
  const char* inject = std::getenv("DS_TEST_INJECT_FAILURE_RANK");
  if (inject == nullptr) GTEST_SKIP() << "set DS_TEST_INJECT_FAILURE_RANK=<rank> to run (mpi.comm.abort does)";
  comm::Communicator& c = world();
  const int failing = std::atoi(inject);
  if (c.rank() == failing) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the others block in all_reduce
    try {
      throw CommError("[test] injected failure on rank " + std::to_string(failing));
    } catch (const Error& e) {
      c.abort(e.what());
    }
    FAIL() << "abort() returned";
  } else {
    std::vector<float> x(1024, 1.f);
    c.all_reduce(x.data(), x.size(), DType::f32);
    FAIL() << "all_reduce returned although rank " << failing << " never joined it";
  }
}

}  // namespace
}  // namespace ds
