// Parsers for the optimizer, scheduler, precision and auxiliary blocks of ds_config.json (brief §1.3–§1.7).
// Optimizer weight_decay defaults to 0: DeepSpeed passes optimizer.params straight to FusedAdam / DeepSpeedCPUAdam,
// whose default is 0 for both "Adam" and "AdamW" (only torch_adam=true would reach torch.optim.AdamW's 0.01).
// Scheduler params are strict: DeepSpeed passes them as constructor kwargs, so it rejects unknown ones as well.
#include "ds/config/config_blocks.h"

#include "ds/core/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>

namespace ds::config::detail {

namespace {

std::string to_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

std::string suggestion(std::string_view value, const std::vector<std::string>& names) {
  const std::string guess = did_you_mean(value, names);
  return guess.empty() ? std::string() : fmt::format("; did you mean '{}'?", guess);
}

// The learning-rate arguments of DeepSpeed's schedulers may be per-parameter-group lists; we have one group.
void reject_lr_list(BlockReader& p, std::string_view key) {
  if (!p.has(key)) return;
  const nlohmann::json* v = p.raw(key);
  if (v != nullptr && v->is_array()) {
    DS_THROW(ConfigError,
             "[config] '{}' in {} is a per-parameter-group list {}; deepspeed.cpp has one parameter group, so give a "
             "single number",
             p.key_name(key), p.ctx().source, render(*v));
  }
}

}  // namespace

bool read_dtype(BlockReader& r, std::string_view key, std::optional<DType>& out) {
  std::string text;
  if (!r.has(key)) {
    r.raw(key);  // marks it known
    return false;
  }
  r.read(key, text);
  const std::string lower = to_lower(text);
  if (lower == "bfp16") {  // the name DeepSpeed's older releases used (Megatron-DeepSpeed's configs still do)
    out = DType::bf16;
    r.ctx().warn(fmt::format("[config] '{}' = '{}' in {} is the old name of 'bf16', which current DeepSpeed "
                             "requires; read as 'bf16'", r.key_name(key), text, r.ctx().source));
  } else if (lower == "fp32") {
    out = DType::f32;
  } else if (lower == "fp16") {
    out = DType::f16;
  } else if (lower == "bf16") {
    out = DType::bf16;
  } else {
    DS_THROW(ConfigError, "[config] '{}' in {} must be one of 'fp32', 'fp16', 'bf16'; found '{}'{}", r.key_name(key),
             r.ctx().source, text, suggestion(lower, {"fp32", "fp16", "bf16"}));
  }
  return true;
}

// ---- optimizer --------------------------------------------------------------------------------------------------

void parse_optimizer(BlockReader r, OptimizerConfig& out) {
  if (!r.present()) return;  // DeepSpeed would use the client's optimizer; we keep FusedAdam's defaults
  out.from_config = true;
  std::string type;
  if (!r.read("type", type)) {
    DS_THROW(ConfigError, "[config] 'optimizer' in {} has no \"type\"; add e.g. \"type\": \"AdamW\" (supported: Adam, "
             "AdamW)", r.ctx().source);
  }
  bool legacy_fusion = false;
  r.read("legacy_fusion", legacy_fusion, Support::not_yet);
  BlockReader p = r.child("params");
  r.finish();

  // DeepSpeed lower-cases the names of its own optimizers; anything else would be looked up in torch.optim.
  static const std::vector<std::string> kDeepSpeedNames = {"Adam", "AdamW", "Lamb", "OneBitAdam", "ZeroOneAdam",
                                                           "OneBitLamb", "Lion", "Adagrad", "MuAdam", "MuAdamW",
                                                           "MuSGD"};
  const std::string lower = to_lower(type);
  // 1-bit Adam and 0/1 Adam are Adam with compressed communication: their exact stages are Adam with decoupled
  // weight decay and no bias correction (onebit/adam.py, onebit/zoadam.py), and the compressed stages run as
  // DeepSpeed's (zero/compressed_adam.h).
  const bool onebit_adam = lower == "onebitadam", zero_one_adam = lower == "zerooneadam";
  const bool compressed_adam = onebit_adam || zero_one_adam;
  const bool compressed_lamb = lower == "onebitlamb";  // likewise: its warm-up stage is exact LAMB
  const bool lamb = lower == "lamb" || compressed_lamb;
  if (lower != "adam" && lower != "adamw" && !compressed_adam && !lamb) {
    for (const auto& n : kDeepSpeedNames) {
      if (to_lower(n) == lower) {
        DS_THROW(ConfigError, "[config] optimizer.type '{}' in {} is a DeepSpeed optimizer that deepspeed.cpp does "
                 "not implement yet, and running Adam instead would train differently than asked; supported: Adam, "
                 "AdamW, Lamb, OneBitAdam, ZeroOneAdam (and OneBitLamb, run uncompressed)", type, r.ctx().source);
      }
    }
    DS_THROW(ConfigError, "[config] unknown optimizer.type '{}' in {} (deepspeed.cpp supports Adam, AdamW and Lamb; "
             "torch.optim optimizers are not available){}", type, r.ctx().source, suggestion(type, kDeepSpeedNames));
  }
  out.type = compressed_adam ? "adamw" : lamb ? "lamb" : lower;
  if (lamb) {
    p.read("max_coeff", out.max_coeff, Support::implemented, 0.0);
    p.read("min_coeff", out.min_coeff, Support::implemented, 0.0);
    DS_CHECK_AS(ConfigError, out.min_coeff <= out.max_coeff,
                "[config] 'optimizer.params.min_coeff' ({}) in {} is above max_coeff ({}); the trust ratio is clamped "
                "to [min_coeff, max_coeff]", out.min_coeff, r.ctx().source, out.max_coeff);
    bool unused_eps_inside_sqrt = false;  // 1-bit LAMB takes it and keeps eps outside the square root
    p.read("eps_inside_sqrt", compressed_lamb ? unused_eps_inside_sqrt : out.eps_inside_sqrt);
  }
  if (compressed_lamb) {  // onebit/lamb.py's warm-up stage: no bias correction, eps outside the square root
    r.ctx().not_implemented.push_back(fmt::format("'optimizer.type' = '{}' (runs as uncompressed LAMB: no bias "
                                                  "correction, exact gradients, per-step trust ratios)", type));
    out.bias_correction = false;
  }
  if (compressed_adam) {
    out.bias_correction = false;
    out.compression = onebit_adam ? OptimizerConfig::Compression::onebit_adam
                                  : OptimizerConfig::Compression::zero_one_adam;
    // Each takes only its own arguments (DeepSpeed's constructors would raise a TypeError for the other's).
    static const std::vector<std::string> kZeroOneOnly = {"var_freeze_step", "var_update_scaler", "local_step_scaler",
                                                          "local_step_clipper"};
    static const std::vector<std::string> kOneBitOnly = {"freeze_step"};
    const std::vector<std::string>& other = onebit_adam ? kZeroOneOnly : kOneBitOnly;
    for (const std::string& key : other) {
      DS_CHECK_AS(ConfigError, !p.contains(key), "[config] 'optimizer.params.{}' in {} is an argument of {}, not of "
                  "{}; remove it (or change the optimizer type)", key, r.ctx().source,
                  onebit_adam ? "ZeroOneAdam" : "OneBitAdam", type);
    }
    auto read_steps = [&](const char* key, int64_t& value, int64_t min) {
      p.read(key, value, Support::implemented, min);
    };
    if (onebit_adam) {
      read_steps("freeze_step", out.freeze_step, 0);
    } else {
      read_steps("var_freeze_step", out.var_freeze_step, 0);
      read_steps("var_update_scaler", out.var_update_scaler, 1);
      read_steps("local_step_scaler", out.local_step_scaler, 1);
      read_steps("local_step_clipper", out.local_step_clipper, 1);
    }
    p.read("cuda_aware", out.cuda_aware);
    p.read("comm_backend_name", out.comm_backend_name);
    static const std::vector<std::string> kBackends = {"nccl", "mpi", "compressed", "hccl"};
    DS_CHECK_AS(ConfigError, std::find(kBackends.begin(), kBackends.end(), out.comm_backend_name) != kBackends.end(),
                "[config] 'optimizer.params.comm_backend_name' in {} must be one of nccl, mpi, compressed, hccl; "
                "found '{}'{}", r.ctx().source, out.comm_backend_name, suggestion(out.comm_backend_name, kBackends));
  }
  if (compressed_lamb) {  // its compression settings: accepted, and unused by the exact run
    for (const char* key : {"freeze_step", "cuda_aware", "comm_backend_name", "coeff_beta", "factor_max",
                            "factor_min", "factor_threshold"})
      p.raw(key);
  }

  if (p.contains("max_grad_norm")) {  // engine.py raises for the key whatever its value
    DS_THROW(ConfigError, "[config] 'optimizer.params.max_grad_norm' in {} is not supported (DeepSpeed rejects it "
             "too); use the top-level \"gradient_clipping\" instead", r.ctx().source);
  }
  p.read("lr", out.lr, Support::implemented, 0.0);
  if (p.read_pair("betas", out.beta1, out.beta2)) {
    for (double b : {out.beta1, out.beta2}) {
      DS_CHECK_AS(ConfigError, b >= 0.0 && b < 1.0,
                  "[config] 'optimizer.params.betas' in {} must hold two numbers in [0, 1); found [{}, {}]",
                  r.ctx().source, out.beta1, out.beta2);
    }
  }
  p.read("eps", out.eps, Support::implemented, 0.0);
  const bool wd_given = p.read("weight_decay", out.weight_decay, Support::implemented, 0.0);
  bool unused_bias_correction = true;  // the 1-bit optimizers take the argument and never apply it
  p.read("bias_correction", compressed_adam || compressed_lamb ? unused_bias_correction : out.bias_correction);
  if (!lamb) {  // FusedAdam arguments (FusedLamb would refuse them)
    bool adam_w_mode = true;
    const bool mode_given = p.read("adam_w_mode", adam_w_mode);
    out.adam_w_mode = (lower == "adamw") || compressed_adam || adam_w_mode;  // engine.py: name == adamw or adam_w_mode
    if (lower == "adamw" && mode_given && !adam_w_mode) {
      r.ctx().warn(fmt::format("[config] 'optimizer.params.adam_w_mode' = false in {} is ignored: type \"AdamW\" "
                               "always uses decoupled weight decay (as in DeepSpeed); use type \"Adam\" for L2 decay",
                               r.ctx().source));
    }
    if (p.read("torch_adam", out.torch_adam) && out.torch_adam) {
      r.ctx().warn(fmt::format(
          "[config] 'optimizer.params.torch_adam' = true in {} is ignored: deepspeed.cpp always runs its own "
          "Adam/AdamW (same update rule){}",
          r.ctx().source,
          (!wd_given && out.adam_w_mode) ? "; note that torch's AdamW would default weight_decay to 0.01, here it is 0"
                                         : ""));
    }
  }
  bool amsgrad = false;
  p.read("amsgrad", amsgrad);
  DS_CHECK_AS(ConfigError, !amsgrad,
              "[config] 'optimizer.params.amsgrad' = true in {} is not supported (DeepSpeed's FusedAdam rejects it "
              "too); remove it", r.ctx().source);
  if (!lamb) {
    bool set_grad_none = true;  // FusedAdam argument; gradients are buffers we own, so it has no meaning here
    p.read("set_grad_none", set_grad_none);
    bool fp32_optimizer_states = true;  // DeepSpeedCPUAdam argument
    p.read("fp32_optimizer_states", fp32_optimizer_states, Support::not_yet);
  }
  p.finish();
}

// ---- scheduler --------------------------------------------------------------------------------------------------

namespace {

// OneCycle's and LRRangeTest's keyword arguments (lr_schedules.py); both refuse unknown ones, as Python would.
void parse_cycle_scheduler(BlockReader& p, SchedulerConfig& out) {
  const std::string& src = p.ctx().source;
  if (out.type == SchedulerType::one_cycle) {
    for (const char* key : {"cycle_min_lr", "cycle_max_lr"}) {
      reject_lr_list(p, key);
      DS_CHECK_AS(ConfigError, p.has(key), "[config] scheduler 'OneCycle' in {} needs 'scheduler.params.{}' (DeepSpeed "
                  "has no default for it); add it", src, key);
    }
    p.read("cycle_min_lr", out.cycle_min_lr, Support::implemented, 0.0);
    p.read("cycle_max_lr", out.cycle_max_lr, Support::implemented, 0.0);
    p.read("decay_lr_rate", out.decay_lr_rate, Support::implemented, 0.0);
    p.read("cycle_first_step_size", out.cycle_first_step_size, Support::implemented, 1);
    p.read("cycle_second_step_size", out.cycle_second_step_size, Support::implemented, 1);
    int64_t stairs = 0;  // accepted and unused, as in DeepSpeed
    std::optional<int64_t> second_stairs;
    p.read("cycle_first_stair_count", stairs, Support::implemented, 0);
    p.read("cycle_second_stair_count", second_stairs, Support::implemented, 0);
    p.read("decay_step_size", out.decay_step_size, Support::implemented, 0);
    p.read("cycle_momentum", out.cycle_momentum);
    p.read("cycle_min_mom", out.cycle_min_mom, Support::implemented, 0.0, 1.0);
    p.read("cycle_max_mom", out.cycle_max_mom, Support::implemented, 0.0, 1.0);
    p.read("decay_mom_rate", out.decay_mom_rate, Support::implemented, 0.0);
  } else {
    reject_lr_list(p, "lr_range_test_min_lr");
    p.read("lr_range_test_min_lr", out.lr_range_test_min_lr, Support::implemented, 0.0);
    p.read("lr_range_test_step_size", out.lr_range_test_step_size, Support::implemented, 1);
    p.read("lr_range_test_step_rate", out.lr_range_test_step_rate, Support::implemented, 0.0);
    p.read("lr_range_test_staircase", out.lr_range_test_staircase);
  }
  p.read("last_batch_iteration", out.last_batch_iteration, Support::implemented, -1);
  p.finish();
}

}  // namespace

void parse_scheduler(BlockReader r, SchedulerConfig& out) {
  if (!r.present()) return;
  std::string type;
  if (!r.read("type", type)) {
    DS_THROW(ConfigError, "[config] 'scheduler' in {} has no \"type\"; add e.g. \"type\": \"WarmupLR\" (supported: "
             "WarmupLR, WarmupDecayLR, WarmupCosineLR)", r.ctx().source);
  }
  BlockReader p = r.child("params");
  r.finish();

  // DeepSpeed looks the class up with getattr, so the name is case-sensitive.
  static const std::vector<std::string> kNames = {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "LRRangeTest",
                                                  "OneCycle"};  // DeepSpeed's five, all implemented
  if (type == "WarmupLR") {
    out.type = SchedulerType::warmup_lr;
  } else if (type == "WarmupDecayLR") {
    out.type = SchedulerType::warmup_decay_lr;
  } else if (type == "WarmupCosineLR") {
    out.type = SchedulerType::warmup_cosine_lr;
  } else if (type == "OneCycle") {
    out.type = SchedulerType::one_cycle;
  } else if (type == "LRRangeTest") {
    out.type = SchedulerType::lr_range_test;
  } else {
    DS_THROW(ConfigError, "[config] unknown scheduler.type '{}' in {} (supported: WarmupLR, WarmupDecayLR, "
             "WarmupCosineLR, OneCycle, LRRangeTest; names are case-sensitive, as in DeepSpeed){}", type,
             r.ctx().source, suggestion(type, kNames));
  }
  out.name = type;
  if (out.type == SchedulerType::one_cycle || out.type == SchedulerType::lr_range_test) {
    parse_cycle_scheduler(p, out);
    return;
  }

  const bool cosine = out.type == SchedulerType::warmup_cosine_lr;
  if (!cosine) {
    reject_lr_list(p, "warmup_min_lr");
    reject_lr_list(p, "warmup_max_lr");
    p.read("warmup_min_lr", out.warmup_min_lr, Support::implemented, 0.0);
    p.read("warmup_max_lr", out.warmup_max_lr, Support::implemented, 0.0);
  } else {
    p.read("warmup_min_ratio", out.warmup_min_ratio, Support::implemented, 0.0);
    p.read("cos_min_ratio", out.cos_min_ratio, Support::implemented, 0.0);
  }
  p.read("warmup_num_steps", out.warmup_num_steps, Support::implemented, 0);
  std::string warmup_type = "log";
  if (p.read("warmup_type", warmup_type)) {
    if (warmup_type == "log") {
      out.warmup_type = WarmupType::log;
    } else if (warmup_type == "linear") {
      out.warmup_type = WarmupType::linear;
    } else {
      // DeepSpeed's WarmupLR logs a warning and falls back to log (its WarmupCosineLR would crash instead).
      out.warmup_type = WarmupType::log;
      r.ctx().warn(fmt::format("[config] 'scheduler.params.warmup_type' = '{}' in {} is unknown; using 'log' as "
                               "DeepSpeed does (valid: 'log', 'linear'){}",
                               warmup_type, r.ctx().source, suggestion(warmup_type, {"log", "linear"})));
    }
  }
  p.read("last_batch_iteration", out.last_batch_iteration, Support::implemented, -1);
  if (out.type != SchedulerType::warmup_lr) {
    if (!p.read("total_num_steps", out.total_num_steps, Support::implemented, 1)) {
      DS_THROW(ConfigError, "[config] scheduler '{}' in {} needs 'scheduler.params.total_num_steps' (the number of "
               "optimizer steps of the whole run); add it", type, r.ctx().source);
    }
  }
  p.finish();

  const int64_t warmup = std::max<int64_t>(2, out.warmup_num_steps);  // DeepSpeed: max(2, warmup_num_steps)
  if (out.type == SchedulerType::warmup_decay_lr && out.total_num_steps < warmup) {
    r.ctx().warn(fmt::format("[config] 'scheduler.params.total_num_steps' ({}) in {} is less than warmup_num_steps "
                             "({}); the learning rate decays to 0 right after warmup",
                             out.total_num_steps, r.ctx().source, warmup));
  }
  DS_CHECK_AS(ConfigError, !cosine || out.total_num_steps > warmup,
              "[config] 'scheduler.params.total_num_steps' ({}) in {} must be greater than warmup_num_steps ({}) for "
              "WarmupCosineLR, whose cosine phase divides by their difference; raise total_num_steps or lower "
              "warmup_num_steps", out.total_num_steps, r.ctx().source, warmup);
}

// ---- precision --------------------------------------------------------------------------------------------------

void parse_fp16(BlockReader r, Fp16Config& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled);
  r.read("auto_cast", out.auto_cast);
  r.read("loss_scale", out.loss_scale, Support::implemented, 0.0);
  bool dynamic_args = false;
  dynamic_args |= r.read("initial_scale_power", out.initial_scale_power, Support::implemented, 0, 127);
  dynamic_args |= r.read("loss_scale_window", out.loss_scale_window, Support::implemented, 1);
  dynamic_args |= r.read("hysteresis", out.hysteresis, Support::implemented, 1);
  dynamic_args |= r.read("consecutive_hysteresis", out.consecutive_hysteresis);
  dynamic_args |= r.read("min_loss_scale", out.min_loss_scale, Support::implemented, 0.0);
  r.read("fp16_master_weights_and_grads", out.fp16_master_weights_and_grads, Support::not_yet);
  r.finish();
  // runtime/config.py builds dynamic_loss_args only for an enabled fp16 block that names one of these keys.
  out.has_dynamic_loss_args = out.enabled && dynamic_args;
}

void parse_bf16(BlockReader r, Bf16Config& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled);
  r.read("immediate_grad_update", out.immediate_grad_update);
  r.finish();
}

// ---- aio: the offload tiers' I/O engine (offload/aio.h) -----------------------------------------------------

void parse_aio(BlockReader r, AioConfig& out) {
  if (!r.present()) return;
  r.read("block_size", out.block_size, Support::implemented, 1);
  r.read("queue_depth", out.queue_depth, Support::implemented, 1);
  const bool old_given = r.has("thread_count");
  const bool new_given = r.has("intra_op_parallelism");
  DS_CHECK_AS(ConfigError, !(old_given && new_given),
              "[config] 'aio.thread_count' and 'aio.intra_op_parallelism' are both set in {}; thread_count is the "
              "deprecated name of intra_op_parallelism: keep only intra_op_parallelism", r.ctx().source);
  r.read("intra_op_parallelism", out.intra_op_parallelism, Support::implemented, 1);
  if (r.read("thread_count", out.intra_op_parallelism, Support::implemented, 1)) {
    r.ctx().warn(fmt::format("[config] 'aio.thread_count' in {} is deprecated; use 'aio.intra_op_parallelism'",
                             r.ctx().source));
  }
  r.read("single_submit", out.single_submit);
  r.read("overlap_events", out.overlap_events);
  r.read("use_gds", out.use_gds, Support::not_yet);
  r.finish();
}

void parse_activation_checkpointing(BlockReader r, ActivationCheckpointingConfig& out) {
  if (!r.present()) return;
  out.present = true;
  if (r.read("partition_activations", out.partition_activations) && out.partition_activations) {
    r.ctx().warn(fmt::format("[config] 'activation_checkpointing.partition_activations' in {} has no effect: it "
                             "splits checkpoints across tensor-parallel ranks, and this job has none, so each "
                             "checkpoint is kept whole",
                             r.ctx().source));
  }
  r.read("contiguous_memory_optimization", out.contiguous_memory_optimization);
  r.read("cpu_checkpointing", out.cpu_checkpointing);
  r.read("number_checkpoints", out.number_checkpoints, Support::implemented, 1);
  r.read("synchronize_checkpoint_boundary", out.synchronize_checkpoint_boundary);
  r.read("profile", out.profile);
  r.finish();
  // DeepSpeed asserts contiguous_memory_optimization's needs when checkpointing is configured, which only happens
  // when it is used: Engine::configure_checkpointing checks them then.
}

// DeepSpeed's engine reads only pipe_partitioned, grad_partitioned, activation_checkpoint_interval and
// use_reentrant from this block, taking the stages and the partition method from PipelineModule's arguments;
// here the block carries them too (brief §1.7), and "schedule" picks ours.
void parse_pipeline(BlockReader r, PipelineConfig& out) {
  if (!r.present()) return;
  r.read("stages", out.stages, Support::implemented, 1);  // "auto" is the default
  if (r.read("partition", out.partition)) {
    const std::string& m = out.partition;
    DS_CHECK_AS(ConfigError, m == "best" || m == "parameters" || m == "uniform" || m.rfind("type:", 0) == 0,
                "[config] 'pipeline.partition' in {} is '{}'; choose 'parameters' (or 'best'), 'uniform' or "
                "'type:REGEX' (e.g. 'type:transformer'){}", r.ctx().source, m,
                m == "profile" ? " ('profile' is not implemented in DeepSpeed either)" : "");
  }
  if (r.read("schedule", out.schedule))
    DS_CHECK_AS(ConfigError, out.schedule == "1f1b" || out.schedule == "zb-h1", "[config] 'pipeline.schedule' in {} "
                "is '{}'; choose '1f1b' (DeepSpeed's TrainSchedule) or 'zb-h1' (zero bubble)", r.ctx().source,
                out.schedule);
  r.read("seed_layers", out.seed_layers, Support::not_yet);
  r.read("activation_checkpoint_interval", out.activation_checkpoint_interval, Support::implemented, 0);
  r.read("pipe_partitioned", out.pipe_partitioned, Support::not_yet);
  r.read("grad_partitioned", out.grad_partitioned, Support::not_yet);
  r.read("use_reentrant", out.use_reentrant, Support::not_yet);
  r.finish();
}

// DeepSpeed's training AutoTP: "tensor_parallel": {"autotp_size": N, "tp": {"tp_size": N, ...}}. The model's
// layers are split by the model definition (nn/tensor_parallel.h), so only the size matters here.
void parse_tensor_parallel(BlockReader r, TensorParallelConfig& out) {
  if (!r.present()) return;
  r.read("autotp_size", out.autotp_size, Support::implemented, 0, 4096);
  BlockReader tp = r.child("tp", Keys::lenient);
  int64_t tp_size = 0;
  if (tp.read("tp_size", tp_size, Support::implemented, 1, 4096)) {
    DS_CHECK_AS(ConfigError, out.autotp_size <= 1 || tp_size == out.autotp_size, "[config] 'tensor_parallel.tp.tp_size' "
                "= {} disagrees with 'tensor_parallel.autotp_size' = {} in {}; give one size", tp_size,
                out.autotp_size, r.ctx().source);
    out.autotp_size = tp_size;
  }
  tp.finish();
  r.finish();
}

void parse_checkpoint(BlockReader r, CheckpointConfig& out) {
  if (!r.present()) return;
  std::string mode;
  if (r.read("tag_validation", mode)) {  // DeepSpeed upper-cases the value before comparing
    std::string upper = mode;
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char ch) { return std::toupper(ch); });
    if (upper == "WARN") {
      out.tag_validation = TagValidation::warn;
    } else if (upper == "IGNORE") {
      out.tag_validation = TagValidation::ignore;
    } else if (upper == "FAIL") {
      out.tag_validation = TagValidation::fail;
    } else {
      DS_THROW(ConfigError, "[config] 'checkpoint.tag_validation' in {} must be one of 'Warn', 'Ignore', 'Fail'; "
               "found '{}'{}", r.ctx().source, mode, suggestion(mode, {"Warn", "Ignore", "Fail"}));
    }
    if (out.tag_validation != TagValidation::warn) {
      r.ctx().not_implemented.push_back(fmt::format("'checkpoint.tag_validation' = '{}'", mode));
    }
  }
  r.read("load_universal", out.load_universal, Support::not_yet);
  r.read("use_node_local_storage", out.use_node_local_storage, Support::not_yet);
  BlockReader pw = r.child("parallel_write");
  pw.read("pipeline_stage", out.parallel_write_pipeline_stage, Support::not_yet);
  pw.finish();
  r.finish();
}

// Blocks with an "enabled" switch warn once, on the switch, rather than on every key they hold.
void parse_flops_profiler(BlockReader r, FlopsProfilerConfig& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled, Support::not_yet);
  r.read("recompute_fwd_factor", out.recompute_fwd_factor, Support::implemented, 0.0);
  r.read("profile_step", out.profile_step);  // Megatron-DeepSpeed writes -1 with the profiler off
  r.read("module_depth", out.module_depth, Support::implemented, -1);
  r.read("top_modules", out.top_modules, Support::implemented, 1);
  r.read("detailed", out.detailed);
  r.read("output_file", out.output_file);
  r.finish();
}

void parse_monitor(BlockReader r, MonitorConfig& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled);
  r.read("output_path", out.output_path);
  r.read("job_name", out.job_name);
  r.finish();
}

void parse_wandb(BlockReader r, WandbConfig& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled);
  if (out.enabled) {
    r.ctx().not_implemented.push_back("'wandb.enabled' = true (Weights & Biases needs its network service; the "
                                      "metrics go to metrics.csv, and to the tensorboard and csv_monitor blocks)");
  }
  r.read("group", out.group);
  r.read("team", out.team);
  r.read("project", out.project);
  r.finish();
}

void parse_comms_logger(BlockReader r, CommsLoggerConfig& out) {
  if (!r.present()) return;
  r.read("enabled", out.enabled, Support::not_yet);
  r.read("verbose", out.verbose);
  r.read("prof_all", out.prof_all);
  r.read("debug", out.debug);
  r.read("prof_ops", out.prof_ops);
  r.finish();
}

void parse_data_types(BlockReader r, std::optional<DType>& grad_accum_dtype) {
  if (!r.present()) return;
  read_dtype(r, "grad_accum_dtype", grad_accum_dtype);
  r.finish();
}

}  // namespace ds::config::detail
