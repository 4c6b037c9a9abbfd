// Tests of the ds_config.json parser: DeepSpeed's batch table (every row, hand-computed expectations), code
// defaults, strictness (unknown keys with suggestions, wrong types, duplicates, malformed JSON) and the warnings
// for settings that are accepted but not implemented yet. Expected values are literals taken from brief §1, not
// from the parser.
#include "common/config_warnings.h"
#include "ds/config/config.h"

#include "ds/core/error.h"
#include "ds/core/log.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

namespace ds {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { set_log_level(LogLevel::error); }  // warnings are checked through cfg.warnings
  void TearDown() override { set_log_level(LogLevel::info); }
};

config::DeepSpeedConfig parse(const std::string& text, int world = 1) {
  return config::parse_config(text, world, "ds_config.json");
}

// Parses `text` expecting a ConfigError whose message holds every fragment; returns the message.
std::string expect_error(const std::string& text, std::initializer_list<std::string> fragments, int world = 1) {
  try {
    parse(text, world);
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[config]", 0), 0u) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
    return msg;
  }
  ADD_FAILURE() << "no ConfigError for: " << text;
  return "";
}

using test::has_warning;

void expect_batch(const config::DeepSpeedConfig& c, int64_t train, int64_t micro, int64_t gas) {
  EXPECT_EQ(c.train_batch_size, train);
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, micro);
  EXPECT_EQ(c.gradient_accumulation_steps, gas);
}

// ---- batch table (brief §1.2) -----------------------------------------------------------------------------------

TEST_F(ConfigTest, BatchAllThreeConsistent) {
  // 64 = 4 * 8 * 2
  expect_batch(parse(R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4,
                         "gradient_accumulation_steps": 8})", 2), 64, 4, 8);
}

TEST_F(ConfigTest, BatchAllThreeMismatchExplains) {
  const std::string msg = expect_error(
      R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8})", {});
  EXPECT_EQ(msg,
            "[config] train_batch_size (64) must equal train_micro_batch_size_per_gpu (4) × "
            "gradient_accumulation_steps (8) × data-parallel world size (1) = 32 in ds_config.json; fix one of the "
            "three or drop train_batch_size to have it derived");
}

TEST_F(ConfigTest, BatchTrainAndMicroDeriveGas) {
  expect_batch(parse(R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4})", 2), 32, 4, 4);  // 32/4/2
  // 10 // 3 // 1 = 3 and 3*3*1 = 9 != 10: DeepSpeed ends in its assertion; we say why.
  expect_error(R"({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 3})",
               {"cannot derive gradient_accumulation_steps", "train_batch_size (10)", "positive multiple",
                "train_micro_batch_size_per_gpu (3)", "= 3"});
  expect_error(R"({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 8})",
               {"cannot derive gradient_accumulation_steps"});  // 4 // 8 = 0
}

TEST_F(ConfigTest, BatchTrainAndGasDeriveMicro) {
  expect_batch(parse(R"({"train_batch_size": 32, "gradient_accumulation_steps": 2})", 4), 32, 4, 2);  // 32/4/2
  // 30 // 2 // 4 = 3 and 3*4*2 = 24 != 30
  expect_error(R"({"train_batch_size": 30, "gradient_accumulation_steps": 4})",
               {"cannot derive train_micro_batch_size_per_gpu", "gradient_accumulation_steps (4)",
                "data-parallel world size (2) = 8"},
               2);
}

TEST_F(ConfigTest, BatchMicroAndGasDeriveTrain) {
  expect_batch(parse(R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3})", 2), 24, 4, 3);
}

TEST_F(ConfigTest, BatchTrainOnly) {
  expect_batch(parse(R"({"train_batch_size": 16})", 4), 16, 4, 1);
  expect_error(R"({"train_batch_size": 10})", {"cannot derive train_micro_batch_size_per_gpu",
                                               "data-parallel world size (4)"}, 4);
  expect_error(R"({"train_batch_size": 2})", {"train_batch_size (2)"}, 4);  // 2 // 4 = 0
}

TEST_F(ConfigTest, BatchMicroOnly) {
  expect_batch(parse(R"({"train_micro_batch_size_per_gpu": 8})", 3), 24, 8, 1);
}

TEST_F(ConfigTest, BatchNeitherTrainNorMicro) {
  expect_error("{}", {"neither train_batch_size nor train_micro_batch_size_per_gpu", "add at least one",
                      "train_micro_batch_size_per_gpu\": 8"});
  expect_error(R"({"gradient_accumulation_steps": 4})", {"gradient_accumulation_steps alone is not enough"});
}

TEST_F(ConfigTest, BatchValuesMustBePositiveIntegers) {
  expect_error(R"({"train_batch_size": 0})", {"'train_batch_size'", "at least 1", "found 0"});
  expect_error(R"({"train_micro_batch_size_per_gpu": -2})", {"at least 1", "found -2"});
  expect_error(R"({"train_micro_batch_size_per_gpu": 2.5})", {"must be an integer", "found 2.5"});
  expect_error(R"({"train_micro_batch_size_per_gpu": "8.5"})", {"must be an integer", "found \"8.5\""});
  expect_error(R"({"train_micro_batch_size_per_gpu": "eight"})", {"must be an integer", "found \"eight\""});
  expect_batch(parse(R"({"train_micro_batch_size_per_gpu": 8e0})"), 8, 8, 1);  // integral floats are fine
}

TEST_F(ConfigTest, BatchAutoMeansDerived) {
  expect_batch(parse(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 4,
                         "gradient_accumulation_steps": "auto"})", 2), 8, 4, 1);
}

TEST_F(ConfigTest, WorldSizeMustBePositive) {
  EXPECT_THROW(parse(R"({"train_batch_size": 8})", 0), ConfigError);
}

// ---- optimizer --------------------------------------------------------------------------------------------------

TEST_F(ConfigTest, OptimizerDefaultsWithoutBlock) {
  const auto c = parse(R"({"train_batch_size": 8})");
  EXPECT_FALSE(c.optimizer.from_config);
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_TRUE(c.optimizer.adam_w_mode);
  EXPECT_TRUE(c.optimizer.bias_correction);
  EXPECT_TRUE(c.warnings.empty());
}

TEST_F(ConfigTest, OptimizerParams) {
  const auto c = parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {
      "lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.1, "bias_correction": false}}})");
  EXPECT_TRUE(c.optimizer.from_config);
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_FALSE(c.optimizer.bias_correction);
}

TEST_F(ConfigTest, OptimizerAdamWModeRules) {
  // "Adam" means AdamW unless adam_w_mode is false; "AdamW" forces it.
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam"}})").optimizer.adam_w_mode);
  const auto l2 = parse(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}})");
  EXPECT_FALSE(l2.optimizer.adam_w_mode);
  EXPECT_EQ(l2.optimizer.type, "adam");
  const auto forced =
      parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"adam_w_mode": false}}})");
  EXPECT_TRUE(forced.optimizer.adam_w_mode);
  EXPECT_TRUE(has_warning(forced, {"adam_w_mode", "ignored"}));
  EXPECT_EQ(parse(R"({"train_batch_size": 8, "optimizer": {"type": "ADAMW"}})").optimizer.type, "adamw");
}

TEST_F(ConfigTest, OptimizerTorchAdamAcceptedWithNote) {
  const auto c =
      parse(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"torch_adam": true}}})");
  EXPECT_TRUE(c.optimizer.torch_adam);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_TRUE(has_warning(c, {"torch_adam", "ignored", "0.01"}));
}

TEST_F(ConfigTest, OptimizerMaxGradNormRejected) {
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"max_grad_norm": 1.0}}})",
               {"optimizer.params.max_grad_norm", "gradient_clipping"});
}

TEST_F(ConfigTest, OptimizerTypes) {
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Lion"}})",
               {"'Lion'", "not implement yet", "would train differently", "supported: Adam, AdamW, Lamb"});
  const auto lamb = parse(R"({"train_batch_size": 8, "optimizer": {"type": "Lamb", "params": {"max_coeff": 0.3}}})");
  EXPECT_EQ(lamb.optimizer.type, "lamb");
  EXPECT_DOUBLE_EQ(lamb.optimizer.max_coeff, 0.3);
  EXPECT_DOUBLE_EQ(lamb.optimizer.min_coeff, 0.01);  // FusedLamb's default
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Lamb", "params": {"adam_w_mode": true}}})",
               {"unknown key 'optimizer.params.adam_w_mode'"});  // not a FusedLamb argument
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Adma"}})",
               {"unknown optimizer.type 'Adma'", "did you mean 'Adam'?"});
  expect_error(R"({"train_batch_size": 8, "optimizer": {"params": {"lr": 1}}})", {"has no \"type\""});
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"amsgrad": true}}})",
               {"amsgrad"});
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"betas": [0.9]}}})",
               {"optimizer.params.betas", "two numbers"});
  expect_error(R"({"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"weight_decy": 0.1}}})",
               {"unknown key 'optimizer.params.weight_decy'", "did you mean 'weight_decay'?"});
}

// ---- scheduler --------------------------------------------------------------------------------------------------

TEST_F(ConfigTest, SchedulerDefaultsAndParams) {
  EXPECT_EQ(parse(R"({"train_batch_size": 8})").scheduler.type, config::SchedulerType::none);
  const auto w = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR"}})");
  EXPECT_EQ(w.scheduler.type, config::SchedulerType::warmup_lr);
  EXPECT_DOUBLE_EQ(w.scheduler.warmup_min_lr, 0.0);
  EXPECT_DOUBLE_EQ(w.scheduler.warmup_max_lr, 1e-3);
  EXPECT_EQ(w.scheduler.warmup_num_steps, 1000);
  EXPECT_EQ(w.scheduler.warmup_type, config::WarmupType::log);
  const auto d = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR", "params": {
      "total_num_steps": 500, "warmup_min_lr": 1e-5, "warmup_max_lr": 2e-4, "warmup_num_steps": 50,
      "warmup_type": "linear"}}})");
  EXPECT_EQ(d.scheduler.type, config::SchedulerType::warmup_decay_lr);
  EXPECT_EQ(d.scheduler.total_num_steps, 500);
  EXPECT_DOUBLE_EQ(d.scheduler.warmup_min_lr, 1e-5);
  EXPECT_DOUBLE_EQ(d.scheduler.warmup_max_lr, 2e-4);
  EXPECT_EQ(d.scheduler.warmup_num_steps, 50);
  EXPECT_EQ(d.scheduler.warmup_type, config::WarmupType::linear);
  const auto cs = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupCosineLR", "params": {
      "total_num_steps": 2000}}})");
  EXPECT_EQ(cs.scheduler.type, config::SchedulerType::warmup_cosine_lr);
  EXPECT_DOUBLE_EQ(cs.scheduler.warmup_min_ratio, 0.0);
  EXPECT_DOUBLE_EQ(cs.scheduler.cos_min_ratio, 1e-4);
  EXPECT_EQ(cs.scheduler.warmup_num_steps, 1000);
}

TEST_F(ConfigTest, SchedulerErrors) {
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR"}})",
               {"WarmupDecayLR", "needs 'scheduler.params.total_num_steps'"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupCosineLR", "params": {
      "total_num_steps": 100, "warmup_num_steps": 100}}})",
               {"total_num_steps' (100)", "greater than warmup_num_steps (100)"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "OneCycle", "params": {"cycle_max_lr": 0.1}}})",
               {"'OneCycle'", "needs 'scheduler.params.cycle_min_lr'"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.1,
                   "cycle_max_lr": 0.2, "warmup_num_steps": 3}}})",
               {"unknown key 'scheduler.params.warmup_num_steps'"});
  const auto lr_range = parse(R"({"train_batch_size": 8, "scheduler": {"type": "LRRangeTest",
                                  "params": {"lr_range_test_staircase": true}}})");
  EXPECT_EQ(lr_range.scheduler.type, config::SchedulerType::lr_range_test);
  EXPECT_DOUBLE_EQ(lr_range.scheduler.lr_range_test_min_lr, 1e-3);  // DeepSpeed's defaults
  EXPECT_EQ(lr_range.scheduler.lr_range_test_step_size, 2000);
  EXPECT_TRUE(lr_range.scheduler.lr_range_test_staircase);
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "warmuplr"}})", {"did you mean 'WarmupLR'?"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupCosineLr", "params": {}}})",
               {"did you mean 'WarmupCosineLR'?"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_steps": 10}}})",
               {"unknown key 'scheduler.params.warmup_steps'", "did you mean 'warmup_num_steps'?"});
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": [1, 2]}}})",
               {"per-parameter-group list"});
  // cos_min_ratio belongs to WarmupCosineLR only
  expect_error(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"cos_min_ratio": 0.1}}})",
               {"unknown key 'scheduler.params.cos_min_ratio'"});
}

TEST_F(ConfigTest, SchedulerUnknownWarmupTypeWarnsAndFallsBack) {
  const auto c = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {
      "warmup_type": "exp"}}})");
  EXPECT_EQ(c.scheduler.warmup_type, config::WarmupType::log);
  EXPECT_TRUE(has_warning(c, {"warmup_type", "'exp'", "using 'log'"}));
}

TEST_F(ConfigTest, DecayShorterThanWarmupWarns) {
  const auto c = parse(R"({"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR", "params": {
      "total_num_steps": 10, "warmup_num_steps": 20}}})");
  EXPECT_TRUE(has_warning(c, {"total_num_steps' (10)", "less than warmup_num_steps (20)"}));
}

// ---- top-level scalars, JSON layer ------------------------------------------------------------------------------

TEST_F(ConfigTest, TopLevelDefaultsFollowTheCode) {
  const auto c = parse(R"({"train_batch_size": 8})");
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 0.0);  // docs say 1.0
  EXPECT_EQ(c.steps_per_print, 0);             // None = never; docs say 10
  EXPECT_FALSE(c.wall_clock_breakdown);
  EXPECT_FALSE(c.prescale_gradients);
  EXPECT_DOUBLE_EQ(c.gradient_predivide_factor, 1.0);
  EXPECT_FALSE(c.communication_data_type.has_value());
  EXPECT_EQ(c.seq_parallel_communication_data_type, DType::f32);
  EXPECT_FALSE(c.zero_allow_untested_optimizer);
  EXPECT_TRUE(c.zero_force_ds_cpu_optimizer);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_FALSE(c.bf16.enabled);
}

TEST_F(ConfigTest, TopLevelScalars) {
  const auto c = parse(R"({"train_batch_size": 8, "gradient_clipping": 1.0, "steps_per_print": 10,
                           "communication_data_type": "FP16", "wall_clock_breakdown": true})");
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.steps_per_print, 10);
  EXPECT_EQ(c.communication_data_type, DType::f16);  // DeepSpeed lower-cases the name
  EXPECT_TRUE(has_warning(c, {"does not implement yet", "communication_data_type", "'wall_clock_breakdown' = true"}));
  EXPECT_EQ(c.warnings.size(), 1u);  // features not implemented are listed in one warning
}

TEST_F(ConfigTest, UnknownTopLevelKeySuggests) {
  expect_error(R"({"train_batch_size": 8, "gradient_clip": 1.0})",
               {"unknown key 'gradient_clip' in ds_config.json", "did you mean 'gradient_clipping'?"});
  expect_error(R"({"train_batch_sz": 8})", {"did you mean 'train_batch_size'?"});
  expect_error(R"({"train_batch_size": 8, "zero_optimisation": {"stage": 0}})",
               {"did you mean 'zero_optimization'?"});
  expect_error(R"({"train_batch_size": 8, "Gradient_Clipping": 1.0})", {"did you mean 'gradient_clipping'?"});
  expect_error(R"({"train_batch_size": 8, "Gradient_Clipping": 1.0})", {"DeepSpeed would silently ignore"});
  // Not a near miss of any key: DeepSpeed never reads it, so it is listed as ignored (one warning for all).
  const auto c = parse(R"({"train_batch_size": 8, "seed": 42, "cuda_visible_devices": "0,1", "comms_config": {}})");
  EXPECT_TRUE(has_warning(c, {"DeepSpeed ignores", "'seed'", "'cuda_visible_devices'", "'comms_config'"}));
  EXPECT_EQ(c.warnings.size(), 1u);
}

TEST_F(ConfigTest, UnknownZeroKeySuggestsExactMessage) {
  const std::string msg = expect_error(
      R"({"train_batch_size": 8, "zero_optimization": {"stage3_prefetch_bucket_sz": 100}})", {});
  EXPECT_EQ(msg, "[config] unknown key 'zero_optimization.stage3_prefetch_bucket_sz' in ds_config.json; did you mean "
                 "'stage3_prefetch_bucket_size'?");
}

TEST_F(ConfigTest, CommentsAccepted) {
  const auto c = parse(R"(// tiny run
{
  /* the batch */ "train_micro_batch_size_per_gpu": 4, // per rank
  "gradient_accumulation_steps": 2
})");
  expect_batch(c, 8, 4, 2);
}

TEST_F(ConfigTest, DuplicateKeysRejected) {
  expect_error(R"({"train_batch_size": 8, "train_batch_size": 16})",
               {"duplicate key 'train_batch_size'", "keep one"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 1, "stage": 2}})",
               {"duplicate key 'zero_optimization.stage'"});
  // The same name in different objects is fine.
  EXPECT_NO_THROW(parse(R"({"train_batch_size": 8, "fp16": {"enabled": false}, "bf16": {"enabled": false}})"));
}

TEST_F(ConfigTest, MalformedJsonGivesLineAndColumn) {
  // line 3 is `  "b" 2`: the parser fails on the '2' in column 7.
  expect_error("{\n  \"train_batch_size\": 8,\n  \"b\" 2\n}", {"not valid JSON", "line 3, column 7", "syntax error"});
  expect_error("{\"train_batch_size\": 8,,}", {"not valid JSON", "line 1", "trailing commas"});
  expect_error("{\"train_batch_size\": 'x'}", {"not valid JSON", "single quotes"});
  expect_error("[1, 2]", {"JSON object"});
}

TEST_F(ConfigTest, WrongTypesNameKeyExpectedAndFound) {
  expect_error(R"({"train_batch_size": 8, "gradient_clipping": "one"})",
               {"'gradient_clipping'", "must be a number", "found \"one\""});
  expect_error(R"({"train_batch_size": 8, "fp16": {"enabled": "maybe"}})",
               {"'fp16.enabled'", "must be true or false", "found \"maybe\""});
  expect_error(R"({"train_batch_size": 8, "fp16": {"enabled": 2}})", {"must be true or false", "found 2"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": 2})",
               {"'zero_optimization'", "must be a JSON object", "found 2"});
  expect_error(R"({"train_batch_size": 8, "steps_per_print": [1]})", {"must be an integer", "found [1]"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"offload_optimizer": {"device": 1}}})",
               {"must be one of", "found 1"});  // strings are never coerced from numbers, as in pydantic
}

TEST_F(ConfigTest, AutoAndNullMeanDefault) {
  const auto c = parse(R"({"train_batch_size": 8, "gradient_clipping": "auto", "steps_per_print": null,
      "fp16": {"enabled": "auto", "loss_scale": "auto"},
      "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
      "zero_optimization": {"stage": 3, "overlap_comm": "auto", "reduce_bucket_size": "auto"}})");
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 0.0);
  EXPECT_EQ(c.steps_per_print, 0);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-3);
  EXPECT_TRUE(c.zero.overlap_comm);  // default for stage 3
  EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
}

// ---- precision --------------------------------------------------------------------------------------------------

TEST_F(ConfigTest, Fp16DefaultsAndDynamicLossArgsFlag) {
  const auto plain = parse(R"({"train_batch_size": 8, "fp16": {"enabled": true}})");
  EXPECT_EQ(plain.fp16.initial_scale_power, 16);
  EXPECT_EQ(plain.fp16.loss_scale_window, 1000);
  EXPECT_EQ(plain.fp16.hysteresis, 2);
  EXPECT_DOUBLE_EQ(plain.fp16.min_loss_scale, 1.0);
  EXPECT_DOUBLE_EQ(plain.fp16.loss_scale, 0.0);
  EXPECT_FALSE(plain.fp16.has_dynamic_loss_args);  // ZeRO would start at 2^32 with hysteresis 1
  EXPECT_FALSE(has_warning(plain, {"fp16"}));  // mixed precision is implemented
  const auto tuned = parse(R"({"train_batch_size": 8, "fp16": {"enabled": true, "loss_scale_window": 500}})");
  EXPECT_TRUE(tuned.fp16.has_dynamic_loss_args);
  EXPECT_EQ(tuned.fp16.loss_scale_window, 500);
  const auto off = parse(R"({"train_batch_size": 8, "fp16": {"enabled": false, "hysteresis": 4}})");
  EXPECT_FALSE(off.fp16.has_dynamic_loss_args);
  EXPECT_TRUE(off.warnings.empty());
}

TEST_F(ConfigTest, Fp16AndBf16Conflict) {
  expect_error(R"({"train_batch_size": 8, "fp16": {"enabled": true}, "bf16": {"enabled": true}})",
               {"fp16.enabled and bf16.enabled are both true", "disable one"});
}

TEST_F(ConfigTest, Bf16AndLegacyName) {
  const auto c = parse(R"({"train_batch_size": 8, "bfloat16": {"enabled": true}})");
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_FALSE(has_warning(c, {"bfloat16"}));
  expect_error(R"({"train_batch_size": 8, "bf16": {"enabled": true}, "bfloat16": {"enabled": true}})",
               {"legacy name 'bfloat16'"});
  expect_error(R"({"train_batch_size": 8, "bf16": {"enabled": true, "immediate_grad_updates": true}})",
               {"did you mean 'immediate_grad_update'?"});
}

TEST_F(ConfigTest, Fp16MasterWeightsNeedsStage2) {
  expect_error(R"({"train_batch_size": 8, "fp16": {"enabled": true, "fp16_master_weights_and_grads": true}})",
               {"fp16_master_weights_and_grads", "stage 2"});
}

// ---- zero_optimization ------------------------------------------------------------------------------------------

TEST_F(ConfigTest, ZeroDefaults) {
  const auto c = parse(R"({"train_batch_size": 8})");
  EXPECT_EQ(c.zero.stage, 0);
  EXPECT_TRUE(c.zero.contiguous_gradients);
  EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
  EXPECT_EQ(c.zero.allgather_bucket_size, 500000000);
  EXPECT_FALSE(c.zero.overlap_comm);
  EXPECT_EQ(c.zero.sub_group_size, 1000000000);             // docs say 1e12
  EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 50000000);  // docs say 5e8
  EXPECT_EQ(c.zero.stage3_param_persistence_threshold, 100000);
  EXPECT_EQ(c.zero.stage3_max_live_parameters, 1000000000);
  EXPECT_EQ(c.zero.stage3_max_reuse_distance, 1000000000);
  EXPECT_EQ(c.zero.zero_hpz_partition_size, 1);
  EXPECT_EQ(c.zero.mics_shard_size, -1);
  EXPECT_FALSE(c.zero.offload_param.has_value());
  EXPECT_FALSE(c.zero.offload_optimizer.has_value());
}

TEST_F(ConfigTest, ZeroOverlapCommDependsOnStage) {
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3}})").zero.overlap_comm);
  EXPECT_FALSE(parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2}})").zero.overlap_comm);
  EXPECT_FALSE(parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "overlap_comm": false}})")
                   .zero.overlap_comm);
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 1, "overlap_comm": true}})")
                  .zero.overlap_comm);
}

TEST_F(ConfigTest, ZeroStageValidationAndWarning) {
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 4}})",
               {"'zero_optimization.stage'", "between 0 and 3", "found 4"});
  const auto c = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8}})");
  EXPECT_EQ(c.zero.stage, 2);
  EXPECT_EQ(c.zero.reduce_bucket_size, 500000000);
  EXPECT_TRUE(c.warnings.empty());  // stages 0-3 are implemented
  const auto p = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1e6,
      "stage3_model_persistence_threshold": 1e6}})");
  EXPECT_FALSE(has_warning(p, {"stage3_max_live_parameters"}));
  EXPECT_TRUE(has_warning(p, {"stage3_model_persistence_threshold", "does not implement yet"}));
}

TEST_F(ConfigTest, ZeroOffloadBlocks) {
  const auto c = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3,
      "offload_param": {"device": "nvme", "nvme_path": "/nvme", "buffer_count": 6, "pin_memory": true},
      "offload_optimizer": {"device": "cpu", "ratio": 0.3, "pipeline_read": true}}})");
  ASSERT_TRUE(c.zero.offload_param.has_value());
  EXPECT_EQ(c.zero.offload_param->device, config::OffloadDevice::nvme);
  EXPECT_EQ(c.zero.offload_param->nvme_path, "/nvme");
  EXPECT_EQ(c.zero.offload_param->buffer_count, 6);
  EXPECT_EQ(c.zero.offload_param->buffer_size, 100000000);
  EXPECT_TRUE(c.zero.offload_param->pin_memory);
  ASSERT_TRUE(c.zero.offload_optimizer.has_value());
  EXPECT_EQ(c.zero.offload_optimizer->device, config::OffloadDevice::cpu);
  EXPECT_EQ(c.zero.offload_optimizer->buffer_count, 4);
  EXPECT_DOUBLE_EQ(c.zero.offload_optimizer->ratio, 0.3);
  EXPECT_TRUE(c.zero.offload_optimizer->pipeline_read);
  EXPECT_FALSE(has_warning(c, {"does not implement yet", "zero_optimization.offload_"}));
  EXPECT_TRUE(has_warning(c, {"offload_optimizer.ratio' = 0.3", "Twin-Flow", "as with ratio 1"}));
}

TEST_F(ConfigTest, ZeroOffloadValidation) {
  // DeepSpeed reads offload_param only at stage 3 (DeepSpeed-Chat's --offload sets it at stage 2).
  const auto below = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2,
      "offload_param": {"device": "cpu"}}})");
  EXPECT_FALSE(below.zero.offload_param_active());
  EXPECT_TRUE(has_warning(below, {"DeepSpeed ignores", "'zero_optimization.offload_param'", "this is stage 2"}));
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2,
      "offload_optimizer": {"device": "cpu", "ratio": 0.5}}})",
               {"offload_optimizer.ratio", "stage 3", "Partial offloading"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})",
               {"no 'nvme_path'"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "CPU"}}})",
               {"'zero_optimization.offload_param.device'", "one of 'none', 'cpu', 'nvme'", "did you mean 'cpu'?"});
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3,
      "offload_optimizer": {"device": "cpu", "buffer_size": 10}}})",
               {"unknown key 'zero_optimization.offload_optimizer.buffer_size'"});
  const auto nv = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/x"}}})");
  EXPECT_TRUE(nv.warnings.empty()) << "nvme is swapped at stages 1 and 2 too (DeepSpeed treats it as cpu there)";
}

TEST_F(ConfigTest, ZeroDeprecatedAliases) {
  const auto c = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "cpu_offload": true}})");
  ASSERT_TRUE(c.zero.offload_optimizer.has_value());
  EXPECT_EQ(c.zero.offload_optimizer->device, config::OffloadDevice::cpu);
  EXPECT_TRUE(has_warning(c, {"cpu_offload", "deprecated", "offload_optimizer"}));
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "cpu_offload": true,
      "offload_optimizer": {"device": "cpu"}}})",
               {"deprecated form of", "keep only 'offload_optimizer'"});
  const auto g = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3,
      "stage3_gather_fp16_weights_on_model_save": true}})");
  EXPECT_TRUE(g.zero.stage3_gather_16bit_weights_on_model_save);
  const auto p = parse(R"({"train_batch_size": 8, "zero_optimization": {"stage": 3, "prefetch_bucket_size": 1000}})");
  EXPECT_EQ(p.zero.stage3_prefetch_bucket_size, 1000);
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"prefetch_bucket_size": 1,
      "stage3_prefetch_bucket_size": 2}})", {"same setting"});
}

TEST_F(ConfigTest, ZeroGradHooksRejectedWithHint) {
  expect_error(R"({"train_batch_size": 8, "zero_optimization": {"grad_hooks": true}})",
               {"unknown key 'zero_optimization.grad_hooks'", "not a zero_optimization field"});
}

// ---- other blocks -----------------------------------------------------------------------------------------------

TEST_F(ConfigTest, AioBlock) {
  const auto c = parse(R"({"train_batch_size": 8, "aio": {"thread_count": 4, "block_size": 262144}})");
  EXPECT_EQ(c.aio.intra_op_parallelism, 4);
  EXPECT_EQ(c.aio.block_size, 262144);
  EXPECT_EQ(c.aio.queue_depth, 8);
  EXPECT_TRUE(c.aio.overlap_events);
  EXPECT_TRUE(has_warning(c, {"aio.thread_count", "deprecated", "intra_op_parallelism"}));
  EXPECT_FALSE(has_warning(c, {"'aio.block_size'", "does not implement yet"}));
  EXPECT_TRUE(has_warning(parse(R"({"train_batch_size": 8, "aio": {"use_gds": true}})"),
                          {"'aio.use_gds'", "does not implement yet"}));
  expect_error(R"({"train_batch_size": 8, "aio": {"thread_count": 4, "intra_op_parallelism": 2}})",
               {"thread_count", "intra_op_parallelism", "keep only"});
  // a value equal to the default is not worth a warning
  EXPECT_TRUE(parse(R"({"train_batch_size": 8, "aio": {"queue_depth": 8}})").warnings.empty());
}

TEST_F(ConfigTest, AuxiliaryBlocks) {
  const auto c = parse(R"({"train_batch_size": 8,
      "activation_checkpointing": {"partition_activations": true, "number_checkpoints": 4},
      "pipeline": {"stages": "auto", "activation_checkpoint_interval": 1},
      "checkpoint": {"tag_validation": "fail", "parallel_write": {"pipeline_stage": true}},
      "flops_profiler": {"enabled": false, "profile_step": 2},
      "tensorboard": {"enabled": true, "output_path": "runs/", "job_name": "tiny"},
      "csv_monitor": {"enabled": false},
      "wandb": {"enabled": false, "project": "p"},
      "comms_logger": {"enabled": false, "prof_ops": ["all_reduce"]},
      "data_types": {"grad_accum_dtype": "bf16"},
      "elasticity": {"enabled": false},
      "amp": {"enabled": true}})");
  EXPECT_TRUE(c.activation_checkpointing.partition_activations);
  EXPECT_EQ(c.activation_checkpointing.number_checkpoints, 4);
  EXPECT_FALSE(c.pipeline.stages.has_value());
  EXPECT_EQ(c.pipeline.activation_checkpoint_interval, 1);
  EXPECT_EQ(c.checkpoint.tag_validation, config::TagValidation::fail);
  EXPECT_TRUE(c.checkpoint.parallel_write_pipeline_stage);
  EXPECT_EQ(c.flops_profiler.profile_step, 2);
  EXPECT_TRUE(c.tensorboard.enabled);
  EXPECT_EQ(c.tensorboard.job_name, "tiny");
  EXPECT_EQ(c.wandb.project, "p");
  ASSERT_EQ(c.comms_logger.prof_ops.size(), 1u);
  EXPECT_EQ(c.grad_accum_dtype, DType::bf16);
  EXPECT_TRUE(has_warning(c, {"activation_checkpointing.partition_activations", "has no effect",
                              "tensor-parallel"}));
  EXPECT_TRUE(c.activation_checkpointing.present);
  EXPECT_FALSE(c.activation_checkpointing.enabled);  // the block configures; it never switches checkpointing on
  EXPECT_FALSE(has_warning(c, {"tensorboard"}));  // written by the monitor part
  EXPECT_FALSE(has_warning(c, {"data_types.grad_accum_dtype"}));
  EXPECT_TRUE(has_warning(c, {"'amp'", "does not implement yet"}));
  EXPECT_FALSE(has_warning(c, {"elasticity"}));  // switched off
  EXPECT_FALSE(has_warning(c, {"flops_profiler"}));
  expect_error(R"({"train_batch_size": 8, "checkpoint": {"tag_validation": "Strict"}})",
               {"'Warn', 'Ignore', 'Fail'"});
  expect_error(R"({"train_batch_size": 8, "tensorboard": {"enabled": true, "outputpath": "x"}})",
               {"unknown key 'tensorboard.outputpath'", "did you mean 'output_path'?"});
  expect_error(R"({"train_batch_size": 8, "data_types": {"grad_accum_dtype": "fp8"}})",
               {"'fp32', 'fp16', 'bf16'"});
}

// The block's values as clear errors; settings that hold anyway on the CPU are silent.
TEST_F(ConfigTest, ActivationCheckpointingBlock) {
  // contiguous_memory_optimization's own needs are checked when checkpointing is switched on (engine tests).
  expect_error(R"({"train_batch_size": 8, "activation_checkpointing": {"number_checkpoints": 0}})",
               {"number_checkpoints"});
  expect_error(R"({"train_batch_size": 8, "activation_checkpointing": {"profil": true}})",
               {"activation_checkpointing.profil", "did you mean 'profile'?"});
  const auto c = parse(R"({"train_batch_size": 8, "activation_checkpointing": {"cpu_checkpointing": true,
      "synchronize_checkpoint_boundary": true, "profile": true, "contiguous_memory_optimization": true,
      "partition_activations": true, "number_checkpoints": 12}})");
  EXPECT_TRUE(c.activation_checkpointing.cpu_checkpointing && c.activation_checkpointing.profile);
  EXPECT_EQ(c.activation_checkpointing.number_checkpoints, 12);
  EXPECT_EQ(c.warnings.size(), 1u);  // partition_activations only
  EXPECT_TRUE(has_warning(c, {"partition_activations", "has no effect"}));
}

// ---- file loading, example, summary -----------------------------------------------------------------------------

TEST_F(ConfigTest, ExampleConfigLoads) {
  const auto c = config::load_config_file(std::string(DS_SOURCE_DIR) + "/examples/ds_config_gpt2_tiny.json", 2);
  expect_batch(c, 16, 8, 1);
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2e-3);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_EQ(c.scheduler.type, config::SchedulerType::warmup_cosine_lr);
  EXPECT_EQ(c.scheduler.warmup_num_steps, 50);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.steps_per_print, 50);
  EXPECT_TRUE(c.warnings.empty());
  const std::string s = c.summary();
  EXPECT_NE(s.find("train_batch_size 16 = micro batch 8 x gradient accumulation 1 x dp 2"), std::string::npos) << s;
  EXPECT_NE(s.find("AdamW"), std::string::npos) << s;
  EXPECT_NE(s.find("WarmupCosineLR"), std::string::npos) << s;
}

TEST_F(ConfigTest, MissingFileIsIoError) {
  EXPECT_THROW(config::load_config_file("/nonexistent/ds_config.json", 1), IoError);
}

TEST_F(ConfigTest, SourceNameAppearsInMessages) {
  try {
    config::parse_config(R"({"train_batch_size": 8, "gradient_clipping": -1})", 1, "my.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("in my.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ds

namespace ds {
namespace {

// ---- parallel degrees -------------------------------------------------------------------------------------------

TEST_F(ConfigTest, TensorParallelSizeSplitsTheWorldAndTheBatchIsPerDataParallelRank) {
  // 8 ranks, 2-way tensor parallelism: 4 data-parallel ranks, so 64 = 4 (micro) * 4 (gas) * 4 (dp).
  const config::DeepSpeedConfig c = parse(R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4,
      "tensor_parallel": {"autotp_size": 2}})", 8);
  EXPECT_EQ(c.world_size, 8);
  EXPECT_EQ(c.tensor_parallel_size, 2);
  EXPECT_EQ(c.dp_world_size, 4);
  expect_batch(c, 64, 4, 4);
  EXPECT_FALSE(has_warning(c, {"tensor_parallel"}));
  // autotp_size 0 (DeepSpeed's default) and 1 mean no tensor parallelism.
  EXPECT_EQ(parse(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 0}})", 2).tensor_parallel_size, 1);
  // The command line's size applies when the config gives none, and must agree when it does.
  const config::DeepSpeedConfig cli = config::parse_config(R"({"train_batch_size": 8})", config::JobShape{4, 2, std::nullopt});
  EXPECT_EQ(cli.tensor_parallel_size, 2);
  EXPECT_EQ(cli.dp_world_size, 2);
  EXPECT_THROW(config::parse_config(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 4}})",
                                    config::JobShape{4, 2, std::nullopt}),
               ConfigError);
}

TEST_F(ConfigTest, AWorldTheDegreesDoNotDivideIsRefused) {
  expect_error(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 4}})",
               {"6 rank(s) cannot be split", "4 tensor-parallel", "multiple of 4"}, 6);
  expect_error(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 2, "tp": {"tp_size": 4}}})",
               {"'tensor_parallel.tp.tp_size' = 4 disagrees", "autotp_size' = 2"}, 4);
  expect_error(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_sise": 2}})", {"did you mean 'autotp_size'"},
               2);
}

}  // namespace
}  // namespace ds
