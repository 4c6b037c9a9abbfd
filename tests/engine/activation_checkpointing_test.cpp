// Activation checkpointing through the engine: at ZeRO stages 0-3, worlds 1 and 2 (thread backend), and in bf16
// mixed precision, a run with --checkpoint-activations has bit-identical losses, gradient norms and parameters to
// the same run without it (the memory it saves is tested in nn/module_runner_test.cpp and measured by `dspeed bench
// train --compare-checkpointing`). The engine's checks on the config block are errors.
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/zero_case.h"
#include "common/local_ranks.h"

using namespace ds;
using namespace ds::zero_case;

namespace {

constexpr int kCheckpointSteps = 3;

struct Trajectory {
  std::vector<double> losses, grad_norms;
  std::vector<float> params;
  double recompute_seconds = 0;  // > 0 only where blocks were recomputed
};

Trajectory run_rank(comm::Communicator& comm, const std::string& json, bool checkpoint) {
  config::DeepSpeedConfig cfg = config::parse_config(json, comm.size(), "checkpointing_case");
  cfg.activation_checkpointing.enabled = checkpoint;
  const int micro = static_cast<int>(cfg.train_micro_batch_size_per_gpu);
  engine::Engine engine(tiny(), cfg, kT, &comm, 42);
  Trajectory t;
  int step = 0;
  auto next = [&](int32_t* in, int32_t* tg) { table().fill(kGlobalRows * step + comm.rank() * micro, micro, in, tg); };
  for (step = 0; step < kCheckpointSteps; ++step) {
    const engine::StepResult r = engine.train_batch(next);
    t.losses.push_back(r.loss);
    t.grad_norms.push_back(r.grad_norm);
    t.recompute_seconds += r.recompute_seconds;
  }
  t.params = engine.optimizer().full_parameters();
  return t;
}

std::vector<Trajectory> run_world(int world, const std::string& json, bool checkpoint) {
  return ds::testing::on_local_ranks<Trajectory>(
      world, [&](comm::Communicator& comm) { return run_rank(comm, json, checkpoint); });
}

void expect_identical(const Trajectory& got, const Trajectory& want, const std::string& what) {
  EXPECT_EQ(got.losses, want.losses) << what;
  EXPECT_EQ(got.grad_norms, want.grad_norms) << what;
  ASSERT_EQ(got.params.size(), want.params.size()) << what;
  EXPECT_EQ(std::memcmp(got.params.data(), want.params.data(), got.params.size() * sizeof(float)), 0)
      << what << ": parameters differ";
}

class CheckpointingEquivalence : public ::testing::TestWithParam<std::tuple<int, int>> {};

}  // namespace

TEST_P(CheckpointingEquivalence, BitIdenticalToTheRunWithoutIt) {
  const auto [stage, world] = GetParam();
  const std::string json = config_json(stage, kGlobalRows / world, 1, stage >= 2);
  const auto plain = run_world(world, json, false);
  const auto ckpt = run_world(world, json, true);
  for (int r = 0; r < world; ++r) {
    const std::string what = fmt::format("stage {} world {} rank {}", stage, world, r);
    expect_identical(ckpt[r], plain[r], what);
    EXPECT_GT(ckpt[r].recompute_seconds, 0.0) << what;
    EXPECT_EQ(plain[r].recompute_seconds, 0.0) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(StagesAndWorlds, CheckpointingEquivalence,
                         ::testing::Combine(::testing::Values(0, 1, 2, 3), ::testing::Values(1, 2)),
                         [](const auto& info) {
                           return fmt::format("stage{}_world{}", std::get<0>(info.param), std::get<1>(info.param));
                         });

// bf16 keeps 16-bit parameters: the recomputation runs on the fp32 copies the hooks make, as the first forward did.
TEST(Checkpointing, Bf16Stage3MatchesBitForBit) {
  const std::string cfg = config_json(3, kGlobalRows / 2, 1, true);
  const std::string with_bf16 = cfg.substr(0, cfg.rfind('}')) + R"(, "bf16": {"enabled": true}})";
  const auto plain = run_world(2, with_bf16, false);
  const auto ckpt = run_world(2, with_bf16, true);
  for (int r = 0; r < 2; ++r) expect_identical(ckpt[r], plain[r], fmt::format("bf16 stage 3 rank {}", r));
}

TEST(Checkpointing, TooFewContiguousCheckpointsIsAClearError) {
  config::DeepSpeedConfig cfg = config::parse_config(R"({"train_batch_size": 4, "activation_checkpointing": {
      "partition_activations": true, "contiguous_memory_optimization": true, "number_checkpoints": 2}})",
                                     1, "ds_config.json");
  cfg.activation_checkpointing.enabled = true;
  try {
    engine::Engine engine(tiny(), cfg, kT);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("number_checkpoints is 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("checkpoints 4 transformer blocks"), std::string::npos) << msg;
  }
  cfg.activation_checkpointing.enabled = false;  // the block alone checkpoints nothing, so nothing to check
  EXPECT_NO_THROW(engine::Engine(tiny(), cfg, kT));
}

// DeepSpeed's assertions on contiguous_memory_optimization hold when checkpointing is on; the block alone (as
// Hugging Face configs carry it) is accepted.
TEST(Checkpointing, ContiguousMemoryNeedsItsSettingsWhenOn) {
  for (const char* block : {R"("contiguous_memory_optimization": true, "number_checkpoints": 4)",
                            R"("contiguous_memory_optimization": true, "partition_activations": true)"}) {
    config::DeepSpeedConfig cfg = config::parse_config(
        fmt::format(R"({{"train_batch_size": 4, "activation_checkpointing": {{{}}}}})", block), 1, "ds_config.json");
    EXPECT_NO_THROW(engine::Engine(tiny(), cfg, kT));
    cfg.activation_checkpointing.enabled = true;
    EXPECT_THROW(engine::Engine(tiny(), cfg, kT), ConfigError) << block;
  }
}

