// The shipped examples/ds_config_zero{0,1,2,3}.json: each loads without warnings (every key it sets is one
// deepspeed.cpp implements), selects its stage with the bucket and overlap settings written in the file, keeps the
// rest of examples/ds_config_gpt2_tiny.json, and trains a step of gpt2-tiny as it is. Expected values are the
// literals of the files, not the parser's defaults. The mixed-precision examples (ds_config_bf16_zero2.json,
// ds_config_fp16.json) load without warnings in their precision and train steps as they are; so do the offload
// examples (ds_config_offload_cpu.json, ds_config_offload_nvme.json), with the state where they put it. Each parallel
// layout's example (ds_config_pp*.json, ds_config_tp*.json, ds_config_3d.json) loads without warnings at the world
// size docs/parallelism.md launches it with and trains a step there.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ds/comm/local/local_comm.h"
#include "ds/core/log.h"
#include "ds/core/rng.h"
#include "ds/config/config.h"
#include "ds/engine/engine.h"

namespace ds {
namespace {

std::string example(const std::string& name) { return std::string(DS_SOURCE_DIR) + "/examples/" + name; }

// Micro-batches of uniformly random GPT-2 token ids.
engine::Engine::BatchFn random_tokens(Rng& rng, int rows, int T) {
  return [&rng, rows, T](int32_t* in, int32_t* tg) {
    for (int i = 0; i < rows * T; ++i) {
      in[i] = static_cast<int32_t>(rng.next_u64() % 50257);
      tg[i] = static_cast<int32_t>(rng.next_u64() % 50257);
    }
  };
}

class ZeroExamples : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { set_log_level(LogLevel::error); }  // warnings are checked through cfg.warnings
  void TearDown() override { set_log_level(LogLevel::info); }
  std::string path() const { return example("ds_config_zero" + std::to_string(GetParam()) + ".json"); }
};

TEST_P(ZeroExamples, LoadsWithoutWarningsAtItsStage) {
  const int stage = GetParam();
  for (int world : {1, 2, 4}) {
    const config::DeepSpeedConfig c = config::load_config_file(path(), world);
    EXPECT_TRUE(c.warnings.empty()) << path() << ": " << (c.warnings.empty() ? "" : c.warnings.front());
    EXPECT_EQ(c.zero.stage, stage) << path();
    EXPECT_EQ(c.train_micro_batch_size_per_gpu, 8);
    EXPECT_EQ(c.gradient_accumulation_steps, 1);
    EXPECT_EQ(c.train_batch_size, 8 * world);
    EXPECT_FALSE(c.zero.offload_optimizer_active());
    EXPECT_FALSE(c.zero.offload_param_active());
    if (stage == 0) continue;
    EXPECT_TRUE(c.zero.overlap_comm);
    EXPECT_TRUE(c.zero.contiguous_gradients);
    EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
    if (stage < 3) { EXPECT_EQ(c.zero.allgather_bucket_size, 500000000); }
    if (stage < 3) continue;
    EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 50000000);
    EXPECT_EQ(c.zero.stage3_max_live_parameters, 1000000000);
    EXPECT_EQ(c.zero.stage3_max_reuse_distance, 1000000000);
    EXPECT_EQ(c.zero.stage3_param_persistence_threshold, 100000);
  }
}

TEST_P(ZeroExamples, KeepsTheTinyExampleSettings) {
  const config::DeepSpeedConfig tiny = config::load_config_file(example("ds_config_gpt2_tiny.json"), 1);
  const config::DeepSpeedConfig c = config::load_config_file(path(), 1);
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2e-3);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_EQ(c.scheduler.type, config::SchedulerType::warmup_cosine_lr);
  EXPECT_EQ(c.scheduler.total_num_steps, 1000);
  EXPECT_EQ(c.scheduler.warmup_num_steps, 50);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.steps_per_print, 50);
  EXPECT_EQ(tiny.zero.stage, 0);  // the tiny example has no zero block: only the zero block differs
}

// `dspeed train --config` builds this Engine on one rank: a step must run and give a finite loss.
TEST_P(ZeroExamples, TrainsAStepOfGpt2Tiny) {
  const config::DeepSpeedConfig c = config::load_config_file(path(), 1);
  constexpr int kT = 16;
  engine::Engine engine(nn::Gpt2Config::preset("gpt2-tiny"), c, kT, nullptr, 7);
  Rng rng(3);
  const engine::StepResult r = engine.train_batch(random_tokens(rng, engine.micro_batch_size(), kT));
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_NEAR(r.loss, std::log(50257.0), 1.0);  // near-uniform predictions at initialisation
  EXPECT_EQ(engine.optimizer().stage(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroExamples, ::testing::Values(0, 1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "Stage" + std::to_string(info.param);
                         });

TEST(MixedPrecisionExamples, LoadWithoutWarningsAndTrain) {
  set_log_level(LogLevel::error);  // fp16's first steps may overflow and log
  struct Case {
    const char* file;
    DType params, grads;
    int stage;
  };
  for (const Case& k : {Case{"ds_config_bf16_zero2.json", DType::bf16, DType::bf16, 2},
                        Case{"ds_config_fp16.json", DType::f16, DType::f16, 1}}) {
    const config::DeepSpeedConfig c = config::load_config_file(example(k.file), 1);
    EXPECT_TRUE(c.warnings.empty()) << k.file << ": " << (c.warnings.empty() ? "" : c.warnings.front());
    EXPECT_EQ(c.zero.stage, k.stage) << k.file;
    const zero::ZeroPrecision p = engine::Engine::precision_for(c);
    EXPECT_EQ(p.params, k.params) << k.file;
    EXPECT_EQ(p.grads, k.grads) << k.file;
    constexpr int kT = 16;
    engine::Engine engine(nn::Gpt2Config::preset("gpt2-tiny"), c, kT, nullptr, 7);
    Rng rng(3);
    const engine::Engine::BatchFn next = random_tokens(rng, engine.micro_batch_size(), kT);
    int applied = 0;
    for (int step = 0; step < 4; ++step) {
      const engine::StepResult r = engine.train_batch(next);
      EXPECT_TRUE(std::isfinite(r.loss)) << k.file;
      applied += !r.skipped;
    }
    EXPECT_GT(applied, 0) << k.file;
  }
  set_log_level(LogLevel::info);
}

TEST(OffloadExamples, LoadWithoutWarningsAndTrainWithTheStateOffloaded) {
  for (const char* file : {"ds_config_offload_cpu.json", "ds_config_offload_nvme.json"}) {
    const config::DeepSpeedConfig c = config::load_config_file(example(file), 1);
    EXPECT_TRUE(c.warnings.empty()) << file << ": " << (c.warnings.empty() ? "" : c.warnings.front());
    ASSERT_TRUE(c.zero.offload_optimizer_active()) << file;
    const bool nvme = c.zero.offload_optimizer->device == config::OffloadDevice::nvme;
    EXPECT_EQ(c.zero.offload_param_active(), nvme) << file;
    MemoryTracker tracker;
    TrackerScope scope(tracker);
    constexpr int kT = 16;
    engine::Engine engine(nn::Gpt2Config::preset("gpt2-tiny"), c, kT, nullptr, 7);
    Rng rng(3);
    const engine::Engine::BatchFn next = random_tokens(rng, engine.micro_batch_size(), kT);
    for (int step = 0; step < 2; ++step) EXPECT_TRUE(std::isfinite(engine.train_batch(next).loss)) << file;
    EXPECT_EQ(tracker.peak(Tier::device, Category::optimizer), 0) << file;
    EXPECT_GT(tracker.peak(nvme ? Tier::nvme : Tier::host, Category::optimizer), 0) << file;
    EXPECT_GT(tracker.peak(nvme ? Tier::nvme : Tier::device, Category::param), 0) << file;
  }
}

}  // namespace
}  // namespace ds

// ---- the parallel layouts -----------------------------------------------------------------------------------------

namespace ds {
namespace {

struct LayoutExample {
  const char* file;
  int world;           // the ranks `dspeed launch -n` gives it in docs/parallelism.md
  int pp, tp, dp, stage;
};

class ParallelExamples : public ::testing::TestWithParam<LayoutExample> {
 protected:
  void SetUp() override { set_log_level(LogLevel::error); }
  void TearDown() override { set_log_level(LogLevel::info); }
};

}  // namespace

// Each layout's example loads without warnings at its world size, lays the ranks out as documented and trains a
// step of gpt2-tiny as it is (ranks as threads).
TEST_P(ParallelExamples, LoadsAndTrainsAStepAtItsLayout) {
  const LayoutExample e = GetParam();
  const config::DeepSpeedConfig c = config::load_config_file(example(e.file), e.world);
  EXPECT_TRUE(c.warnings.empty()) << e.file << ": " << (c.warnings.empty() ? "" : c.warnings.front());
  EXPECT_EQ(c.pipeline_parallel_size, e.pp) << e.file;
  EXPECT_EQ(c.tensor_parallel_size, e.tp) << e.file;
  EXPECT_EQ(c.dp_world_size, e.dp) << e.file;
  EXPECT_EQ(c.zero.stage, e.stage) << e.file;
  std::vector<double> losses(static_cast<size_t>(e.world));
  comm::run_local_world(e.world, [&](comm::Communicator& comm) {
    engine::Engine engine(nn::Gpt2Config::preset("gpt2-tiny"), c, 32, &comm, 3);
    Rng rng(17 + engine.topology().coords().data);
    losses[static_cast<size_t>(comm.rank())] =
        engine.train_batch(random_tokens(rng, static_cast<int>(c.train_micro_batch_size_per_gpu), 32)).loss;
  });
  for (double l : losses) {
    EXPECT_TRUE(std::isfinite(l)) << e.file;
    EXPECT_EQ(l, losses[0]) << e.file << ": every rank reports the job's loss";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ParallelExamples,
    ::testing::Values(LayoutExample{"ds_config_pp2.json", 2, 2, 1, 1, 0},
                      LayoutExample{"ds_config_pp4.json", 4, 4, 1, 1, 0},
                      LayoutExample{"ds_config_pp2_zbh1.json", 2, 2, 1, 1, 0},
                      LayoutExample{"ds_config_tp2.json", 2, 1, 2, 1, 0},
                      LayoutExample{"ds_config_tp4.json", 4, 1, 4, 1, 0},
                      LayoutExample{"ds_config_pp2_tp2.json", 4, 2, 2, 1, 0},
                      LayoutExample{"ds_config_pp2_zero1.json", 4, 2, 1, 2, 1},
                      LayoutExample{"ds_config_tp2_zero2.json", 4, 1, 2, 2, 2},
                      LayoutExample{"ds_config_3d.json", 8, 2, 2, 2, 1}),
    [](const auto& info) {
      std::string name = info.param.file;
      name = name.substr(10, name.size() - 15);  // ds_config_X.json -> X
      return name;
    });

}  // namespace ds

// ---- Mixture of Experts -------------------------------------------------------------------------------------------

namespace ds {

// Each MoE model file loads and trains a step with ds_config_moe.json as they are, on 2 ranks with the experts
// spread over both (ep 2) and on one; every rank reports the job's loss and the routing statistics.
TEST(MoeExamples, ModelFilesTrainAStepWithTheMoeConfig) {
  set_log_level(LogLevel::error);
  for (const char* file : {"model_gpt2_tiny_moe.json", "model_gpt2_tiny_pr_moe.json", "model_gpt2_tiny_mixtral.json"}) {
    nn::Gpt2Config model = nn::Gpt2Config::from_spec(example(file));
    ASSERT_TRUE(model.moe.enabled()) << file;
    for (const int world : {1, 2}) {
      const config::DeepSpeedConfig c = config::load_config_file(example("ds_config_moe.json"), world);
      EXPECT_TRUE(c.warnings.empty()) << file;
      model.moe.ep_size = world;
      std::vector<engine::StepResult> results(static_cast<size_t>(world));
      comm::run_local_world(world, [&](comm::Communicator& comm) {
        engine::Engine engine(model, c, 32, &comm, 3);
        Rng rng(17 + comm.rank());
        results[static_cast<size_t>(comm.rank())] =
            engine.train_batch(random_tokens(rng, static_cast<int>(c.train_micro_batch_size_per_gpu), 32));
      });
      for (const engine::StepResult& r : results) {
        EXPECT_TRUE(std::isfinite(r.loss)) << file;
        EXPECT_EQ(r.loss, results[0].loss) << file;
        EXPECT_EQ(r.moe_tokens_mean, results[0].moe_tokens_mean) << file;
        EXPECT_GT(r.moe_aux_loss, 0.0) << file;
      }
    }
  }
  set_log_level(LogLevel::info);
}

TEST(CompressionExamples, LoadWithoutWarningsAndTrainAtTwoRanks) {
  for (const char* file : {"ds_config_onebit_adam.json", "ds_config_zero_one_adam.json"}) {
    const config::DeepSpeedConfig c = config::load_config_file(example(file), 2);
    EXPECT_TRUE(c.warnings.empty()) << file << ": " << (c.warnings.empty() ? "" : c.warnings.front());
    EXPECT_NE(c.optimizer.compression, config::OptimizerConfig::Compression::none) << file;
    std::vector<engine::StepResult> results(2);
    comm::run_local_world(2, [&](comm::Communicator& comm) {
      engine::Engine engine(nn::Gpt2Config::preset("gpt2-tiny"), c, 16, &comm, 3);
      Rng rng(17 + comm.rank());
      results[static_cast<size_t>(comm.rank())] =
          engine.train_batch(random_tokens(rng, static_cast<int>(c.train_micro_batch_size_per_gpu), 16));
      EXPECT_NE(engine.optimizer().compression(), nullptr) << file;
    });
    for (const engine::StepResult& r : results) EXPECT_TRUE(std::isfinite(r.loss)) << file;
  }
}

}  // namespace ds
