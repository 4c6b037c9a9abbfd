// Local (threads) backend and the self communicator: every collective at world sizes 1-4 against references in
// collective_checks.h, exact traffic counts, bitwise in-order reductions, and the failure paths (abort, timeout,
// a rank that returns early, mismatched calls) which must end in CommError on every rank, never a hang. A
// watchdog ends the process if a case hangs anyway, so ctest reports a failure instead of waiting.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <thread>

#include "comm/collective_checks.h"
#include "ds/comm/comm_factory.h"
#include "ds/comm/local/local_comm.h"
#include "ds/comm/mpi/mpi_comm.h"
#include "ds/core/memory.h"

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

// Ends the process (a test failure) if the scope it guards runs longer than `seconds`.
class Watchdog {
 public:
  Watchdog(double seconds, std::string what) : what_(std::move(what)) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done_; })) {
        std::fprintf(stderr, "watchdog: %s did not finish within %.0f s (a hang); failing the test binary\n",
                     what_.c_str(), seconds);
        std::_Exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// run_local_world with a hang watchdog and a generous collective timeout.
void run_world(int world, const std::function<void(comm::Communicator&)>& fn) {
  Watchdog dog(120, "local world of " + std::to_string(world));
  comm::LocalWorldOptions options;
  options.timeout_s = 60;
  comm::run_local_world(world, fn, options);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

size_t at(comm::Collective c) { return static_cast<size_t>(c); }

// ---------------------------------------------------------------------------------------------------------------

TEST(CommStats, NamesAndTotals) {
  EXPECT_EQ(comm::collective_name(comm::Collective::all_reduce), "all_reduce");
  EXPECT_EQ(comm::collective_name(comm::Collective::reduce_scatter), "reduce_scatter");
  EXPECT_EQ(comm::collective_name(comm::Collective::all_gather), "all_gather");
  EXPECT_EQ(comm::collective_name(comm::Collective::broadcast), "broadcast");
  EXPECT_EQ(comm::collective_name(comm::Collective::all_to_all), "all_to_all");
  EXPECT_EQ(comm::collective_name(comm::Collective::send), "send");
  EXPECT_EQ(comm::collective_name(comm::Collective::recv), "recv");
  EXPECT_EQ(comm::collective_name(comm::Collective::barrier), "barrier");
  comm::CommStats s;
  s.record(comm::Collective::all_reduce, 10, 20);
  s.record(comm::Collective::send, 5, 5);
  EXPECT_EQ(s.calls[at(comm::Collective::all_reduce)], 1);
  EXPECT_EQ(s.total_bytes(), 15);
  EXPECT_EQ(s.total_payload(), 25);
  s.reset();
  EXPECT_EQ(s.total_bytes(), 0);
  EXPECT_EQ(s.calls[at(comm::Collective::send)], 0);
}

TEST(CommSelf, CollectivesAreLocalCopiesAndMoveNoBytes) {
  auto c = comm::make_self_communicator();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->backend(), "self");
  std::vector<float> a = {1, 2, 3}, b(3);
  c->all_reduce(a.data(), 3, DType::f32, comm::ReduceOp::max);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c->reduce_scatter(a.data(), b.data(), 3, DType::f32);
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), 0.f);
  c->all_gather(a.data(), b.data(), 3, DType::f32);
  EXPECT_EQ(b, a);
  c->broadcast(a.data(), 3, DType::f32, 0);
  std::fill(b.begin(), b.end(), 0.f);
  c->all_to_all_v_async(a.data(), {3}, b.data(), {3}, DType::f32)->wait();
  EXPECT_EQ(b, a);
  c->barrier();
  EXPECT_TRUE(c->all_reduce_async(a.data(), 3, DType::f32, comm::ReduceOp::sum)->test());
  EXPECT_EQ(c->stats().total_bytes(), 0);
  EXPECT_EQ(c->stats().calls[at(comm::Collective::all_reduce)], 2);
  EXPECT_EQ(c->stats().calls[at(comm::Collective::barrier)], 1);
  EXPECT_EQ(c->stats().payload[at(comm::Collective::all_gather)], 12);
  EXPECT_THROW(c->send_async(a.data(), 3, DType::f32, 0, 0), CommError);
  EXPECT_THROW(c->broadcast(a.data(), 3, DType::f32, 1), CommError);
  const std::vector<float> before = a;
  c->all_reduce(a.data(), 2, DType::bf16);  // 16-bit floats reduce too; alone, nothing changes
  EXPECT_EQ(a, before);
  EXPECT_EQ(c->split(-1, 0), nullptr);
  auto sub = c->split(5, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  c->abort("test over");
  EXPECT_NE(error_of([&] { c->all_reduce(a.data(), 3, DType::f32); }).find("rank 0 aborted: test over"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Every collective at world sizes 1, 2, 3, 4.

class CommLocalWorld : public ::testing::TestWithParam<int> {};

TEST_P(CommLocalWorld, AllReduce) {
  run_world(GetParam(), [](comm::Communicator& c) {
    EXPECT_EQ(c.backend(), "local");
    for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max, comm::ReduceOp::min}) {
      for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{5003}}) {
        test::check_all_reduce<float>(c, op, n);
        test::check_all_reduce<int32_t>(c, op, n);
      }
    }
  });
}

TEST_P(CommLocalWorld, ReduceScatter) {
  run_world(GetParam(), [](comm::Communicator& c) {
    for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max, comm::ReduceOp::min}) {
      for (bool in_place : {false, true}) {
        test::check_reduce_scatter<float>(c, op, 1031, in_place);
        test::check_reduce_scatter<int32_t>(c, op, 3, in_place);
      }
    }
  });
}

TEST_P(CommLocalWorld, HalfPrecisionReductions) {
  run_world(GetParam(), [](comm::Communicator& c) {
    test::check_half_collectives(c, DType::bf16);
    test::check_half_collectives(c, DType::f16);
  });
}

TEST_P(CommLocalWorld, AllGather) {
  run_world(GetParam(), [](comm::Communicator& c) {
    for (bool in_place : {false, true}) {
      test::check_all_gather<float>(c, 777, in_place);
      test::check_all_gather<int32_t>(c, 1, in_place);
    }
  });
}

TEST_P(CommLocalWorld, BroadcastFromEveryRoot) {
  run_world(GetParam(), [](comm::Communicator& c) {
    test::check_broadcast<float>(c, 333);
    test::check_broadcast<int32_t>(c, 1);
  });
}

TEST_P(CommLocalWorld, AllToAllVWithUnevenCounts) {
  run_world(GetParam(), [](comm::Communicator& c) {
    test::check_all_to_all_v<float>(c);
    test::check_all_to_all_v<int32_t>(c);
  });
}

TEST_P(CommLocalWorld, SendRecvRing) {
  run_world(GetParam(), [](comm::Communicator& c) { test::check_send_recv(c); });
}

TEST_P(CommLocalWorld, AsyncCompletesInIssueOrder) {
  run_world(GetParam(), [](comm::Communicator& c) { test::check_async_order(c); });
}

TEST_P(CommLocalWorld, TrafficCounters) {
  run_world(GetParam(), [](comm::Communicator& c) { test::check_stats(c); });
}

TEST_P(CommLocalWorld, Split) {
  run_world(GetParam(), [](comm::Communicator& c) { test::check_split(c); });
}

TEST_P(CommLocalWorld, BarrierWaitsForEveryRank) {
  std::atomic<int> arrived{0};
  run_world(GetParam(), [&](comm::Communicator& c) {
    for (int round = 1; round <= 3; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(c.rank() * 5));
      arrived.fetch_add(1);
      c.barrier();
      EXPECT_GE(arrived.load(), round * c.size());
      c.barrier();  // nobody starts the next round before everyone has checked
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, CommLocalWorld, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return fmt::format("W{}", info.param); });

// ---------------------------------------------------------------------------------------------------------------

// The float sum is rank 0 + rank 1 + ... in that order, exactly, whatever the timing; the same in every run.
TEST(CommLocal, AllReduceIsBitwiseTheInOrderSum) {
  constexpr int W = 4;
  constexpr size_t n = 100003;
  std::vector<std::vector<float>> inputs(W, std::vector<float>(n));
  for (int r = 0; r < W; ++r) {
    std::mt19937 rng(1234 + r);  // as check_repeatable_all_reduce draws them
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (auto& x : inputs[r]) x = dist(rng);
  }
  std::vector<float> reference(n);
  for (size_t i = 0; i < n; ++i) {
    float acc = inputs[0][i];
    for (int r = 1; r < W; ++r) acc += inputs[r][i];
    reference[i] = acc;
  }
  for (int run = 0; run < 3; ++run) {
    run_world(W, [&](comm::Communicator& c) {
      std::vector<float> got = test::check_repeatable_all_reduce(c, n);
      test::expect_same(got, reference, "in-order float sum, run " + std::to_string(run));
    });
  }
}

TEST(CommLocal, ExactTrafficNumbers) {
  // World of 4: all_reduce of 1000 f32 (4000 bytes) sends 2 * 4000 * 3/4 = 6000; reduce_scatter and all_gather of
  // 250 per rank (4000 bytes in all) send 3000; broadcast of 4000 bytes from rank 1: 4000 there, 0 elsewhere.
  run_world(4, [](comm::Communicator& c) {
    std::vector<float> buf(1000), out(1000);
    c.all_reduce(buf.data(), 1000, DType::f32);
    c.reduce_scatter(buf.data(), out.data(), 250, DType::f32);
    c.all_gather(buf.data(), out.data(), 250, DType::f32);
    c.broadcast(buf.data(), 1000, DType::f32, 1);
    // all_to_all_v: rank r sends r+1 i32 elements to each rank (itself included).
    std::vector<size_t> sc(4, c.rank() + 1), rc = {1, 2, 3, 4};
    c.all_to_all_v_async(buf.data(), sc, out.data(), rc, DType::i32)->wait();
    const comm::CommStats& s = c.stats();
    EXPECT_EQ(s.bytes[at(comm::Collective::all_reduce)], 6000);
    EXPECT_EQ(s.payload[at(comm::Collective::all_reduce)], 4000);
    EXPECT_EQ(s.bytes[at(comm::Collective::reduce_scatter)], 3000);
    EXPECT_EQ(s.bytes[at(comm::Collective::all_gather)], 3000);
    EXPECT_EQ(s.bytes[at(comm::Collective::broadcast)], c.rank() == 1 ? 4000 : 0);
    EXPECT_EQ(s.bytes[at(comm::Collective::all_to_all)], 3 * 4 * (c.rank() + 1));
    EXPECT_EQ(s.payload[at(comm::Collective::all_to_all)], 4 * 4 * (c.rank() + 1));
    EXPECT_EQ(s.total_bytes(), 6000 + 3000 + 3000 + (c.rank() == 1 ? 4000 : 0) + 12 * (c.rank() + 1));
  });
  // World of 3: 2 * 40 * 2/3 = 53.33 rounds down to 53.
  run_world(3, [](comm::Communicator& c) {
    std::vector<float> buf(10);
    c.all_reduce(buf.data(), 10, DType::f32);
    EXPECT_EQ(c.stats().bytes[at(comm::Collective::all_reduce)], 53);
    EXPECT_EQ(c.stats().calls[at(comm::Collective::all_reduce)], 1);
  });
}

TEST(CommLocal, AllToAllVInPlaceBuffer) {
  // recv == send: the backend must stage the send side.
  run_world(3, [](comm::Communicator& c) {
    const int W = c.size(), r = c.rank();
    std::vector<int32_t> buf(2 * W);
    for (int d = 0; d < W; ++d) buf[2 * d] = buf[2 * d + 1] = r * 10 + d;
    std::vector<size_t> counts(W, 2);
    c.all_to_all_v_async(buf.data(), counts, buf.data(), counts, DType::i32)->wait();
    for (int s = 0; s < W; ++s) {
      EXPECT_EQ(buf[2 * s], s * 10 + r);
      EXPECT_EQ(buf[2 * s + 1], s * 10 + r);
    }
  });
}

TEST(CommLocal, NestedSplitsAndIndependentGroups) {
  run_world(4, [](comm::Communicator& c) {
    auto half = c.split(c.rank() / 2, 0);  // {0,1} {2,3}
    auto pair = half->split(0, -half->rank());
    EXPECT_EQ(pair->size(), 2);
    EXPECT_EQ(pair->rank(), 1 - half->rank());
    // Collectives on different groups interleave freely.
    int32_t a = c.rank(), b = 1;
    auto w1 = c.all_reduce_async(&a, 1, DType::i32, comm::ReduceOp::sum);
    auto w2 = pair->all_reduce_async(&b, 1, DType::i32, comm::ReduceOp::sum);
    w2->wait();
    w1->wait();
    EXPECT_EQ(a, 6);
    EXPECT_EQ(b, 2);
  });
}

// all_reduce keeps each rank's reduced share (ceil(1000 / 2) rounded to 16 = 512 elements on rank 0, 488 on rank 1)
// in one grow-only buffer charged to that rank's tracker as host comm_buffer memory.
TEST(CommLocal, BuffersAreChargedToTheRankAndReused) {
  std::vector<MemoryTracker> trackers(2);
  run_world(2, [&](comm::Communicator& c) {
    TrackerScope scope(trackers[c.rank()]);
    const int64_t expected = c.rank() == 0 ? 512 * 4 : 488 * 4;
    std::vector<float> x(1000, 1.f);
    for (int i = 0; i < 3; ++i) c.all_reduce(x.data(), 1000, DType::f32);
    EXPECT_EQ(trackers[c.rank()].current(Tier::host, Category::comm_buffer), expected);
    c.all_reduce(x.data(), 10, DType::f32);
    EXPECT_EQ(trackers[c.rank()].current(Tier::host, Category::comm_buffer), expected);
    EXPECT_EQ(trackers[c.rank()].peak(Tier::host, Category::comm_buffer), expected);
  });
  for (auto& t : trackers) EXPECT_EQ(t.current(Tier::host, Category::comm_buffer), 0);  // freed with the world
}

// ---------------------------------------------------------------------------------------------------------------
// Failure paths: every rank must come back with an error, quickly.

TEST(CommLocal, AbortWakesRanksWaitingInAllReduce) {
  Watchdog dog(10, "abort test");
  std::mutex mu;
  std::vector<std::string> messages(4);
  std::vector<double> latency(4, -1);
  std::atomic<int64_t> thrown_at{0};
  try {
    comm::run_local_world(4, [&](comm::Communicator& c) {
      if (c.rank() == 2) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the others are waiting by now
        thrown_at.store(Clock::now().time_since_epoch().count());
        throw std::runtime_error("boom");
      }
      std::vector<float> x(1000, 1.f);
      try {
        c.all_reduce(x.data(), x.size(), DType::f32);
      } catch (const CommError& e) {
        const auto now = Clock::now().time_since_epoch().count();
        std::lock_guard<std::mutex> lock(mu);
        messages[c.rank()] = e.what();
        latency[c.rank()] = std::chrono::duration<double>(Clock::duration(now - thrown_at.load())).count();
        throw;
      }
    });
    FAIL() << "run_local_world returned normally";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom");  // the first exception, not the CommErrors it caused
  }
  for (int r : {0, 1, 3}) {
    EXPECT_NE(messages[r].find("[comm] rank 2 aborted: boom"), std::string::npos) << "rank " << r << ": "
                                                                                   << messages[r];
    EXPECT_GE(latency[r], 0.0);
    EXPECT_LT(latency[r], 1.0) << "rank " << r << " took " << latency[r] << " s to notice the abort";
  }
}

TEST(CommLocal, AbortWakesPointToPointAndSubgroupWaiters) {
  Watchdog dog(10, "abort p2p test");
  std::atomic<int> comm_errors{0};
  EXPECT_THROW(comm::run_local_world(4,
                               [&](comm::Communicator& c) {
                                 auto sub = c.split(c.rank() % 2, 0);
                                 try {
                                   if (c.rank() == 0) {
                                     std::this_thread::sleep_for(std::chrono::milliseconds(50));
                                     c.abort("rank 0 gave up");
                                   } else if (c.rank() == 1) {
                                     float x;
                                     c.recv_async(&x, 1, DType::f32, 0, 0)->wait();  // never sent
                                   } else {
                                     int32_t v = 1;
                                     sub->all_reduce(&v, 1, DType::i32);  // ranks 2 and 3 wait for ranks 0, 1
                                     sub->all_reduce(&v, 1, DType::i32);
                                     c.barrier();
                                   }
                                 } catch (const CommError& e) {
                                   if (std::string(e.what()).find("rank 0 aborted: rank 0 gave up") !=
                                       std::string::npos)
                                     comm_errors.fetch_add(1);
                                   throw;
                                 }
                                 if (c.rank() == 0) throw CommError("aborted on purpose");
                               }),
               CommError);
  EXPECT_EQ(comm_errors.load(), 3);
}

TEST(CommLocal, TimeoutNamesTheCollectiveAndTheMissingRank) {
  Watchdog dog(20, "timeout test");
  comm::LocalWorldOptions options;
  options.timeout_s = 0.3;
  std::mutex mu;
  std::vector<std::string> messages(3);
  comm::run_local_world(
      3,
      [&](comm::Communicator& c) {
        int32_t v = 1;
        if (c.rank() == 2) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        const std::string m = error_of([&] { c.all_reduce(&v, 1, DType::i32); });
        std::lock_guard<std::mutex> lock(mu);
        messages[c.rank()] = m;
      },
      options);
  for (int r = 0; r < 3; ++r) {
    EXPECT_NE(messages[r].find("all_reduce timed out after 0.3 s"), std::string::npos) << messages[r];
    EXPECT_NE(messages[r].find("rank(s) 2"), std::string::npos) << messages[r];
  }
}

TEST(CommLocal, RankThatReturnsEarlyEndsTheWorld) {
  Watchdog dog(10, "early return test");
  const std::string m = error_of([] {
    comm::run_local_world(2, [](comm::Communicator& c) {
      if (c.rank() == 1) return;
      int32_t v = 1;
      c.all_reduce(&v, 1, DType::i32);
    });
  });
  EXPECT_NE(m.find("rank 1 returned while the world still waits for it in all_reduce"), std::string::npos) << m;
}

TEST(CommLocal, MismatchedCallsFailOnEveryRank) {
  Watchdog dog(10, "mismatch test");
  std::atomic<int> failures{0};
  auto expect_mismatch = [&](const std::function<void(comm::Communicator&)>& call, const char* needle) {
    failures = 0;
    EXPECT_THROW(comm::run_local_world(2,
                                 [&](comm::Communicator& c) {
                                   const std::string m = error_of([&] { call(c); });
                                   if (m.find(needle) != std::string::npos) failures.fetch_add(1);
                                   if (!m.empty()) throw CommError(m);
                                 }),
                 CommError);
    EXPECT_EQ(failures.load(), 2) << needle;
  };
  std::vector<float> buf(64);
  expect_mismatch([&](comm::Communicator& c) { c.all_reduce(buf.data(), 10 + c.rank(), DType::f32); },
                  "rank 0 called all_reduce(count 10, f32, sum) but rank 1 called all_reduce(count 11, f32, sum)");
  expect_mismatch(
      [&](comm::Communicator& c) {
        if (c.rank() == 0) {
          c.all_reduce(buf.data(), 8, DType::f32);
        } else {
          c.broadcast(buf.data(), 8, DType::f32, 0);
        }
      },
      "mismatched collectives");
  expect_mismatch(
      [&](comm::Communicator& c) {
        std::vector<size_t> sc = {1, 1}, rc = {1, 2};
        c.all_to_all_v_async(buf.data(), sc, buf.data() + 8, rc, DType::f32)->wait();
      },
      "rank 1 sends 1 elements to rank 0, which expects 2");
  expect_mismatch(
      [&](comm::Communicator& c) {
        if (c.rank() == 0) {
          c.send_async(buf.data(), 4, DType::f32, 1, 0)->wait();
        } else {
          c.recv_async(buf.data(), 5, DType::f32, 0, 0)->wait();
        }
      },
      "the matching recv expects 5 f32 elements");
}

TEST(CommLocal, BadArgumentsThrowAtTheCall) {
  auto world = comm::make_local_world(2);
  std::vector<float> buf(4);
  comm::Communicator& c = *world[0];
  EXPECT_THROW(c.broadcast_async(buf.data(), 4, DType::f32, 2), CommError);
  EXPECT_THROW(c.send_async(buf.data(), 4, DType::f32, 5, 0), CommError);
  EXPECT_THROW(c.recv_async(buf.data(), 4, DType::f32, 1, -1), CommError);
  EXPECT_THROW(c.all_to_all_v_async(buf.data(), {1}, buf.data(), {1}, DType::f32), CommError);
  EXPECT_THROW(comm::make_local_world(0), CommError);
}

// ---------------------------------------------------------------------------------------------------------------

TEST(CommFactory, BackendsByName) {
  EXPECT_EQ(comm::make_world_communicator("self")->backend(), "self");
  EXPECT_THROW(comm::make_world_communicator("nccl-ish"), ConfigError);
  if (!comm::launched_under_mpi()) { EXPECT_EQ(comm::make_world_communicator("auto")->backend(), "self"); }
}

TEST(CommFactory, LauncherEnvironment) {
  const char* vars[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                        "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* v : vars) {
    if (const char* x = std::getenv(v)) saved.emplace_back(v, x);
    unsetenv(v);
  }
  EXPECT_EQ(comm::mpi_env_rank(), -1);
  EXPECT_EQ(comm::mpi_env_world(), 0);
  EXPECT_FALSE(comm::launched_under_mpi());
  setenv("SLURM_PROCID", "0", 1);  // an sbatch script, not a task of an srun step
  EXPECT_FALSE(comm::launched_under_mpi());
  setenv("SLURM_STEP_NUM_TASKS", "16", 1);
  EXPECT_EQ(comm::mpi_env_rank(), 0);
  EXPECT_EQ(comm::mpi_env_world(), 16);
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "8", 1);
  EXPECT_EQ(comm::mpi_env_rank(), 3);
  EXPECT_EQ(comm::mpi_env_world(), 8);
  EXPECT_TRUE(comm::launched_under_mpi());
  for (const char* v : vars) unsetenv(v);
  for (auto& [k, v] : saved) setenv(k.c_str(), v.c_str(), 1);
}

// Not a speed assertion: prints the bus bandwidth of a 64 MiB all_reduce on 2 thread-ranks for the record.
TEST(CommLocal, AllReduceBusBandwidth64MiB) {
  constexpr int W = 2;
  constexpr size_t n = (64u << 20) / sizeof(float);
  std::vector<double> times;
  std::mutex mu;
  run_world(W, [&](comm::Communicator& c) {
    std::vector<float> x(n, 1.f);
    for (int it = 0; it < 6; ++it) {
      c.barrier();
      const auto t0 = Clock::now();
      c.all_reduce(x.data(), n, DType::f32);
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      if (c.rank() == 0 && it > 0) {
        std::lock_guard<std::mutex> lock(mu);
        times.push_back(dt);
      }
    }
    EXPECT_EQ(x[n - 1], 64.f);  // 1 -> 2 -> 4 -> ... -> 2^6
  });
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  const double bus = 2.0 * (W - 1) / W * static_cast<double>(n * sizeof(float)) / t / 1e9;
  std::printf("[ bandwidth ] local all_reduce 64 MiB, 2 ranks: median %.1f ms, bus bandwidth %.2f GB/s\n", t * 1e3,
              bus);
}

}  // namespace
}  // namespace ds
