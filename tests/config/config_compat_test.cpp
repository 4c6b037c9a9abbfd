// What DeepSpeed accepts in real configs, accepted here and reported: "auto" filled as Hugging Face's integration
// fills it (each key against the value HfTrainerDeepSpeedConfig would put there), hjson's comments and trailing
// commas, pydantic's lax coercions, keys DeepSpeed never reads (one warning listing them), features not implemented
// (one warning listing them), and the errors that remain: typos, contradictions between a flag and the config.
#include <gtest/gtest.h>

#include <string>

#include "common/config_warnings.h"
#include "ds/config/config.h"
#include "ds/core/error.h"
#include "ds/core/log.h"

namespace ds {
namespace {

class ConfigCompat : public ::testing::Test {
 protected:
  void SetUp() override { set_log_level(LogLevel::error); }
  void TearDown() override { set_log_level(LogLevel::info); }
};

config::DeepSpeedConfig parse(const std::string& text, const config::AutoValues* autos = nullptr, int world = 1) {
  return config::parse_config(text, world, "ds_config.json", autos);
}

using test::has_warning;

bool resolved(const config::DeepSpeedConfig& c, const std::string& entry) {
  for (const auto& r : c.auto_resolved)
    if (r == entry) return true;
  return false;
}

// transformers' tests/deepspeed/ds_config_zero3.json, in the part that matters here.
constexpr const char* kHfZero3 = R"({
  "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
  "bf16": {"enabled": "auto"},
  "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
  "scheduler": {"type": "WarmupLR",
                "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto"}},
  "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                        "stage3_param_persistence_threshold": "auto",
                        "stage3_gather_16bit_weights_on_model_save": true},
  "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto",
  "steps_per_print": 2000,
  "train_batch_size": "auto",
  "train_micro_batch_size_per_gpu": "auto",
  "wall_clock_breakdown": false
})";

TEST_F(ConfigCompat, AutoValuesFilledAsHuggingFaceDoes) {
  config::AutoValues a;
  a.micro_batch = {4, true};
  a.grad_accum = {3, true};
  a.lr = {3e-4, true};
  a.weight_decay = {0.01, true};
  a.max_grad_norm = {0.5, true};
  a.warmup_steps = {7, true};
  a.precision = {"bf16", true};
  a.hidden_size = 64;
  const auto c = parse(kHfZero3, &a, 2);
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, 4);
  EXPECT_EQ(c.gradient_accumulation_steps, 3);
  EXPECT_EQ(c.train_batch_size, 2 * 4 * 3);  // world x micro x accumulation
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 0.5);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, a.beta1.value);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, a.beta2.value);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, a.eps.value);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_min_lr, 0.0);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_max_lr, 3e-4);  // the optimizer's lr
  EXPECT_EQ(c.scheduler.warmup_num_steps, 7);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_EQ(c.zero.reduce_bucket_size, 64 * 64);                    // hidden_size^2
  EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 3686);             // int(0.9 * 64^2) = int(3686.4)
  EXPECT_EQ(c.zero.stage3_param_persistence_threshold, 10 * 64);  // 10 * hidden_size
  EXPECT_TRUE(resolved(c, "'optimizer.params.lr' = 0.0003 (--lr)")) << c.auto_resolved.size();
  EXPECT_TRUE(resolved(c, "'train_micro_batch_size_per_gpu' = 4 (--micro-batch)"));
  EXPECT_TRUE(resolved(c, "'fp16.enabled' = false (--precision)"));
  EXPECT_EQ(c.auto_resolved.size(), 16u);  // every "auto" of the file
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
  // The checkpointed JSON holds the values the run used.
  EXPECT_EQ(c.json.at("optimizer").at("params").at("lr"), 3e-4);
}

TEST_F(ConfigCompat, AutoDefaultsAreDspeedTrainsRecipeAndNamed) {
  const config::AutoValues a;  // nothing given on the command line
  const auto c = parse(kHfZero3, &a);
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, 8);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2e-3);
  EXPECT_TRUE(resolved(c, "'optimizer.params.lr' = 0.002 (default of --lr)"));
  EXPECT_TRUE(resolved(c, "'optimizer.params.betas' = [0.9,0.95] (dspeed train's default)"));
  // No model width: the ZeRO bucket sizes keep DeepSpeed's defaults, and the warning says so.
  EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
  EXPECT_TRUE(has_warning(c, {"\"auto\" values that nothing here fills", "'zero_optimization.reduce_bucket_size' -> "
                              "500000000", "'zero_optimization.stage3_prefetch_bucket_size' -> 50000000"}));
}

TEST_F(ConfigCompat, WithoutAutoValuesAutoMeansDeepSpeedsDefaultWithAWord) {
  const auto c = parse(R"({"train_micro_batch_size_per_gpu": 2, "gradient_clipping": "auto",
                           "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 0.0);
  EXPECT_TRUE(has_warning(c, {"'gradient_clipping' -> 0", "'optimizer.params.lr' -> 0.001"}));
  try {
    parse(R"({"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"})");
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--micro-batch"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigCompat, FlagAndConfigMustAgree) {
  config::AutoValues a;
  a.lr = {1e-3, true};
  try {
    parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"lr": 3e-4}}})", &a);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'optimizer.params.lr' is 0.0003"), std::string::npos) << m;
    EXPECT_NE(m.find("--lr is 0.001"), std::string::npos) << m;
  }
  // Equal values agree (8 and 8.0 alike); a flag the config has no place for is a warning.
  a.micro_batch = {8, true};
  const auto c = parse(R"({"train_micro_batch_size_per_gpu": 8.0, "optimizer": {"type": "Adam",
                           "params": {"lr": 0.001}}})", &a);
  EXPECT_TRUE(c.warnings.empty());
  a.max_grad_norm = {2.0, true};
  const auto d = parse(R"({"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "Adam",
                           "params": {"lr": 0.001}}})", &a);
  EXPECT_TRUE(has_warning(d, {"--max-grad-norm 2.0 is not used", "does not set 'gradient_clipping'"}));
  config::AutoValues p;
  p.precision = {"fp16", true};
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "fp16": {"enabled": false}})", &p), ConfigError);
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "fp16": {"enabled": "auto"}})", &p).fp16.enabled);
  EXPECT_TRUE(has_warning(parse(R"({"train_batch_size": 8})", &p), {"--precision fp16 is not used"}));
}

TEST_F(ConfigCompat, AutoScheduleAndBatchEdges) {
  config::AutoValues a;
  // Warmup "auto" is 5% of the schedule's own total when the config sets it (not of --steps' default).
  const auto c = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupCosineLR",
      "params": {"total_num_steps": 40, "warmup_num_steps": "auto"}}})", &a);
  EXPECT_EQ(c.scheduler.warmup_num_steps, 2);
  EXPECT_TRUE(resolved(c, "'scheduler.params.warmup_num_steps' = 2 (5% of total_num_steps)"));
  // A flag that feeds train_batch_size is used even where its own key is absent.
  a.micro_batch = {4, true};
  const auto d = parse(R"({"train_batch_size": "auto", "gradient_accumulation_steps": 2})", &a, 2);
  EXPECT_EQ(d.train_batch_size, 16);
  EXPECT_EQ(d.train_micro_batch_size_per_gpu, 4);
  EXPECT_TRUE(d.warnings.empty()) << d.warnings.front();
  // A value the product cannot use leaves train_batch_size "auto"; the reader names the key at fault.
  try {
    parse(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": -8})", &a);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'train_micro_batch_size_per_gpu'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse(R"({"train_micro_batch_size_per_gpu": 4611686018427387904, "gradient_accumulation_steps": 4})"),
               ConfigError);  // no overflow: refused
  // true and 1 agree, as in Python.
  config::AutoValues p;
  p.precision = {"fp16", true};
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "fp16": {"enabled": 1}})", &p).fp16.enabled);
}

TEST_F(ConfigCompat, HjsonCommentsAndTrailingCommas) {
  const auto c = parse(R"(# a DeepSpeed tutorial snippet
{
  "train_batch_size": 16,  // the global batch
  "gradient_accumulation_steps": 2, /* a
     block comment */
  "optimizer": {"type": "Adam", "params": {"lr": 0.0001, "betas": [0.8, 0.999,],},},
  "zero_optimization": {"stage": 1,},
  "wall_clock_breakdown": false,
})");
  EXPECT_EQ(c.train_batch_size, 16);
  EXPECT_EQ(c.gradient_accumulation_steps, 2);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.8);
  EXPECT_EQ(c.zero.stage, 1);
  // Inside strings nothing is touched.
  const auto s = parse(R"({"train_batch_size": 8, "tensorboard": {"output_path": "a,}#b//c", "job_name": "x/*y*/"}})");
  EXPECT_EQ(s.tensorboard.output_path, "a,}#b//c");
  EXPECT_EQ(s.tensorboard.job_name, "x/*y*/");
  // Syntax errors still point at the place, counted in the original text.
  try {
    parse("{\n  // note\n  \"train_batch_size\": 8,\n  \"x\": 1 \"y\": 2\n}");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("line 4, column 12"), std::string::npos) << e.what();
  }
  // A line break may stand for the comma between members and list values (DeepSpeed's monitor tutorial).
  const auto m = parse("{\n  \"train_batch_size\": 8\n  \"optimizer\": {\"type\": \"Adam\", \"params\": "
                       "{\"betas\": [0.5\n 0.6]}}\n  \"tensorboard\": {\"enabled\": false}\n  \"wandb\": {}\n}");
  EXPECT_EQ(m.train_batch_size, 8);
  EXPECT_DOUBLE_EQ(m.optimizer.beta2, 0.6);
  try {  // an error after an inserted comma still points at the file's own line and column
    parse("{\"a\": {\"enabled\": false}\n\"train_batch_size\": 8 :}");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("line 2, column 23"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigCompat, SizeAndNestingAreBounded) {
  std::string deep = R"({"train_batch_size": 8, "x": )" + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_THROW(parse(deep), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "gradient_clipping": 1e400})"), ConfigError);  // out of range
  std::string big = R"({"train_batch_size": 8, "pad": ")" + std::string(size_t(17) << 20, 'a') + "\"}";
  try {
    parse(big);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("at most 16 MiB"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigCompat, PydanticCoercions) {
  const auto c = parse(R"({"train_batch_size": "8", "gradient_clipping": false, "steps_per_print": "10",
      "zero_optimization": {"stage": "2", "overlap_comm": "yes", "contiguous_gradients": 0,
                            "reduce_bucket_size": "5e8"},
      "fp16": {"enabled": "true", "loss_scale": "0", "initial_scale_power": true},
      "optimizer": {"type": "Adam", "params": {"lr": "1e-4", "betas": ["0.9", 0.99]}}})");
  EXPECT_EQ(c.train_batch_size, 8);
  EXPECT_EQ(c.gradient_clipping, 0.0);
  EXPECT_EQ(c.steps_per_print, 10);
  EXPECT_EQ(c.zero.stage, 2);
  EXPECT_TRUE(c.zero.overlap_comm);
  EXPECT_FALSE(c.zero.contiguous_gradients);
  EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
  EXPECT_TRUE(c.fp16.enabled);
  EXPECT_EQ(c.fp16.initial_scale_power, 1);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_THROW(parse(R"({"train_batch_size": "8.5"})"), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "gradient_clipping": "nan"})"), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "fp16": {"enabled": "sure"}})"), ConfigError);
}

TEST_F(ConfigCompat, KeysDeepSpeedIgnoresAreListedOnce) {
  const auto c = parse(R"({"train_batch_size": 8, "cuda_visible_devices": "0", "comms_config": {"x": 1},
      "disable_python_gc": true,
      "fp16": {"enabled": true, "fp16": true, "hysteresis": 2},
      "bf16": {"enabled": false, "hysteresis": 2},
      "zero_optimization": {"stage": 2}})");
  ASSERT_EQ(c.warnings.size(), 1u);
  for (const char* key : {"'cuda_visible_devices'", "'comms_config'", "'disable_python_gc'", "'fp16.fp16'",
                          "'bf16.hysteresis'"})
    EXPECT_NE(c.warnings[0].find(key), std::string::npos) << key << " in " << c.warnings[0];
  EXPECT_TRUE(c.fp16.enabled);
  // A near miss is still refused, in lenient sections too, and so is an unknown key where DeepSpeed is strict.
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "grandient_accumulation_steps": 2})"), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "fp16": {"enabeld": true}})"), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "foo": 1}})"), ConfigError);
  EXPECT_THROW(parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"foo": 1}}})"),
               ConfigError);  // passed to the optimizer as keyword arguments: a TypeError in DeepSpeed
}

TEST_F(ConfigCompat, FeaturesNotImplementedAreListedOnceAndTheRunGoesOn) {
  const auto c = parse(R"({"train_batch_size": 8,
      "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                            "offload_param": {"device": "nvme", "nvme_path": "/nvme"}},
      "optimizer": {"type": "OneBitAdam", "params": {"lr": 1e-4, "freeze_step": 100, "cuda_aware": false}},
      "flops_profiler": {"enabled": true}, "comms_logger": {"enabled": true},
      "compression_training": {"weight_quantization": {}}, "pipeline": {"seed_layers": true},
      "wandb": {"enabled": true}, "comet": {"enabled": true}})");
  ASSERT_EQ(c.warnings.size(), 1u);
  for (const char* implemented : {"offload_", "OneBitAdam"})
    EXPECT_EQ(c.warnings[0].find(implemented), std::string::npos) << c.warnings[0];
  for (const char* key : {"flops_profiler.enabled",
                          "comms_logger.enabled", "compression_training", "pipeline.seed_layers", "wandb", "comet"})
    EXPECT_NE(c.warnings[0].find(key), std::string::npos) << key << " in " << c.warnings[0];
  EXPECT_EQ(c.optimizer.type, "adamw");  // 1-bit Adam's exact stage: decoupled decay, no bias correction
  EXPECT_FALSE(c.optimizer.bias_correction);
  EXPECT_EQ(c.optimizer.compression, config::OptimizerConfig::Compression::onebit_adam);
  EXPECT_EQ(c.optimizer.freeze_step, 100);
}

}  // namespace
}  // namespace ds
