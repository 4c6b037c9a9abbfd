// Pipeline schedules and partitioning: 1F1B's order is DeepSpeed's TrainSchedule's (the brief's simulated stream
// for 4 stages and 4 micro-batches); every stage runs every pass once, in an order that cannot deadlock; under
// unit-time passes the bubble is the formula's for 1F1B, (p-1)/(m+p-1), and for ZB-H1, (p-1)/(3m+p-1), with ZB-H1
// below 1F1B everywhere; DeepSpeed's partition methods place the layers as it does.
#include <gtest/gtest.h>

#include <algorithm>

#include <fmt/format.h>

#include "ds/core/error.h"
#include "ds/pipe/partition.h"
#include "ds/pipe/schedule.h"

using namespace ds;
using namespace ds::pipe;

namespace {
std::string text(const std::vector<Instr>& stage) {
  std::string s;
  for (const Instr& in : stage) s += fmt::format("{}{}{}", s.empty() ? "" : " ", op_name(in.op), in.micro);
  return s;
}
}  // namespace

TEST(PipeSchedule, OneFOneBIsDeepSpeedsTrainScheduleOrder) {
  const auto s = make_schedule(Schedule::one_f_one_b, 4, 4);
  // brief §4: stage 0 runs F0..F3 then B0..B3; the last stage alternates F and B.
  EXPECT_EQ(text(s[0]), "F0 F1 F2 F3 B0 B1 B2 B3");
  EXPECT_EQ(text(s[3]), "F0 B0 F1 B1 F2 B2 F3 B3");
  const auto long_run = make_schedule(Schedule::one_f_one_b, 4, 8);
  EXPECT_EQ(text(long_run[1]), "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7");
}

TEST(PipeSchedule, EveryStageRunsEveryPassOnceAndTheBubbleIsTheFormulas) {
  for (int p : {2, 3, 4}) {
    for (int m : {1, 4, 8, 16}) {
      double bubble[2];
      for (Schedule kind : {Schedule::one_f_one_b, Schedule::zb_h1}) {
        const auto sched = make_schedule(kind, p, m);
        ASSERT_EQ(sched.size(), size_t(p));
        const bool zb = kind == Schedule::zb_h1;
        for (int s = 0; s < p; ++s) {
          std::vector<int> seen(4 * m, 0);
          for (const Instr& in : sched[s]) ++seen[static_cast<int>(in.op) * m + in.micro];
          for (int mb = 0; mb < m; ++mb) {
            EXPECT_EQ(seen[int(Op::forward) * m + mb], 1);
            EXPECT_EQ(seen[int(Op::backward) * m + mb], zb ? 0 : 1);
            EXPECT_EQ(seen[int(Op::backward_input) * m + mb], zb ? 1 : 0);
            EXPECT_EQ(seen[int(Op::backward_weight) * m + mb], zb ? 1 : 0);
          }
        }
        const Timeline tl = simulate(kind, sched);  // throws if the orders deadlock
        int64_t idle = 0;
        for (int64_t i : tl.idle) idle += i;
        const double measured = double(idle) / (double(p) * tl.makespan);
        bubble[zb] = measured;
        const std::string what = fmt::format("{} p {} m {}", schedule_name(kind), p, m);
        if (m >= p) {
          EXPECT_NEAR(measured, bubble_formula(kind, p, m), 1e-12) << what;
        }
        // 1F1B's memory bound: stage s holds at most p - s micro-batches.
        for (int s = 0; s < p; ++s)
          EXPECT_LE(tl.peak_in_flight[s], zb ? (p - s) + (p - 1) : std::min(p - s, m)) << what << " stage " << s;
      }
      if (p > 1) {
        EXPECT_LT(bubble[1], bubble[0]) << "p " << p << " m " << m;
      }
    }
  }
}

TEST(PipeSchedule, ADeadlockingOrderIsCaught) {
  // Stage 1 waits for micro-batch 1 before 0 has gone through: the replay must say so, not hang.
  std::vector<std::vector<Instr>> bad = {{{Op::forward, 0}, {Op::forward, 1}, {Op::backward, 0}, {Op::backward, 1}},
                                         {{Op::forward, 1}, {Op::backward, 1}, {Op::forward, 0}, {Op::backward, 0}}};
  bad[0] = {{Op::forward, 0}, {Op::backward, 0}, {Op::forward, 1}, {Op::backward, 1}};
  EXPECT_THROW(simulate(Schedule::one_f_one_b, bad), Error);
  EXPECT_THROW(schedule_from_name("gpipe2"), ConfigError);
  EXPECT_EQ(schedule_from_name("zb-h1"), Schedule::zb_h1);
}

TEST(PipePartition, DeepSpeedsMethods) {
  // A GPT-2 shape: the embedding and the tied head are heavy, four equal blocks, a small final norm.
  const std::vector<Layer> gpt = {{"Gpt2Embedding", 100}, {"TransformerBlock", 50}, {"TransformerBlock", 50},
                                  {"TransformerBlock", 50}, {"TransformerBlock", 50}, {"Gpt2FinalNorm", 1},
                                  {"Gpt2Head", 100}};
  EXPECT_EQ(partition_layers(gpt, "uniform", 3), (std::vector<int>{0, 3, 5, 7}));  // 7 = 3 + 2 + 2
  EXPECT_EQ(partition_layers(gpt, "uniform", 2), (std::vector<int>{0, 4, 7}));
  // parameters: the heaviest stage as light as it can be (150 | 150 | 101 of 401).
  EXPECT_EQ(partition_layers(gpt, "parameters", 3), (std::vector<int>{0, 2, 5, 7}));
  EXPECT_EQ(partition_layers(gpt, "best", 2), (std::vector<int>{0, 3, 7}));
  // type:transformer balances the blocks alone; the layers of no weight stay with the part before them.
  EXPECT_EQ(partition_layers(gpt, "type:transformer", 2), (std::vector<int>{0, 3, 7}));
  EXPECT_EQ(partition_layers(gpt, "type:TRANSFORMER", 4), (std::vector<int>{0, 2, 3, 4, 7}));
  EXPECT_THROW(partition_layers(gpt, "type:attention", 2), ConfigError);
  EXPECT_THROW(partition_layers(gpt, "type:(", 2), ConfigError);
  EXPECT_THROW(partition_layers(gpt, "profile", 2), ConfigError);
  EXPECT_THROW(partition_layers(gpt, "uniform", 8), ConfigError);
}
