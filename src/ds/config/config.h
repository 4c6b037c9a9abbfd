// DeepSpeedConfig: a DeepSpeed ds_config.json read into plain structs with DeepSpeed's *code* defaults
// (deepspeed-brief §1; where the docs disagree, the code wins, §1.8) and its batch-size arithmetic.
// Non-obvious decisions: we accept what DeepSpeed accepts (hjson comments and trailing commas, pydantic's lax
// coercions, keys DeepSpeed never reads — listed in one warning) but refuse what it silently drops: a near miss of a
// known key is a ConfigError with a "did you mean", and so is an unknown key where DeepSpeed's pydantic models
// refuse it too. A DeepSpeed feature deepspeed.cpp does not implement yet is accepted and listed in one warning,
// unless running without it would train something else than asked (then a ConfigError says so).
// "auto" is filled from AutoValues as Hugging Face's integration does (config_auto.cpp); otherwise it means default.
// Parsing lives in config.cpp (top level, batch), config_auto.cpp, config_blocks.cpp, config_zero.cpp and
// config_reader.{h,cpp}.
#pragma once

#include "ds/core/dtype.h"

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ds::config {

// ---- optimizer --------------------------------------------------------------------------------------------------
// Adam/AdamW (DeepSpeed builds FusedAdam, or DeepSpeedCPUAdam under offload, with these defaults) and LAMB
// (FusedLamb: its defaults are the same for lr, betas, eps, weight decay and bias correction).
struct OptimizerConfig {
  bool from_config = false;  // false: ds_config.json had no "optimizer" block and the defaults below apply
  std::string type = "adamw";  // lower-cased DeepSpeed name: "adam", "adamw" or "lamb" (the compressed Adams: "adamw")
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // FusedAdam/DeepSpeedCPUAdam default (torch's AdamW would use 0.01)
  bool adam_w_mode = true;    // effective mode: "AdamW" forces it; "Adam" is AdamW unless adam_w_mode is false
  bool bias_correction = true;
  bool torch_adam = false;  // accepted for compatibility; has no effect here
  // LAMB only: the trust ratio's clamp, and where eps goes (FusedLamb's defaults)
  double max_coeff = 10.0;
  double min_coeff = 0.01;
  bool eps_inside_sqrt = false;
  // 1-bit Adam and 0/1 Adam (runtime/fp16/onebit/, docs/compression.md): Adam with compressed communication.
  enum class Compression : uint8_t { none, onebit_adam, zero_one_adam };
  Compression compression = Compression::none;
  int64_t freeze_step = 100000;          // OneBitAdam: exact Adam for this many steps, then 1-bit momentum
  int64_t var_freeze_step = 100000;      // ZeroOneAdam: the variance's last update
  int64_t var_update_scaler = 16;        //   variance updates before their interval doubles
  int64_t local_step_scaler = 32678;     //   steps before the local-step interval doubles
  int64_t local_step_clipper = 16;       //   the local-step interval's cap
  bool cuda_aware = false;               // accepted: which buffers MPI may touch (host buffers here)
  std::string comm_backend_name = "nccl";  // accepted: the job's communicator carries the compressed messages
};

// ---- scheduler (runtime/lr_schedules.py) ------------------------------------------------------------------------
enum class SchedulerType { none, warmup_lr, warmup_decay_lr, warmup_cosine_lr, one_cycle, lr_range_test };
enum class WarmupType { log, linear };

struct SchedulerConfig {
  SchedulerType type = SchedulerType::none;
  std::string name;  // DeepSpeed class name as written ("WarmupLR", ...); empty when none
  // WarmupLR / WarmupDecayLR (absolute learning rates)
  double warmup_min_lr = 0.0;
  double warmup_max_lr = 1e-3;
  // all three; the schedule uses max(2, warmup_num_steps) as DeepSpeed does
  int64_t warmup_num_steps = 1000;
  WarmupType warmup_type = WarmupType::log;  // unknown names warn and fall back to log
  // WarmupDecayLR / WarmupCosineLR (required there)
  int64_t total_num_steps = 0;
  // WarmupCosineLR (ratios of the optimizer's lr)
  double warmup_min_ratio = 0.0;
  double cos_min_ratio = 1e-4;
  // OneCycle (cycle_min_lr and cycle_max_lr are required). DeepSpeed accepts the stair counts and never uses them.
  double cycle_min_lr = 0.0;
  double cycle_max_lr = 0.0;
  double decay_lr_rate = 0.0;
  int64_t cycle_first_step_size = 2000;
  std::optional<int64_t> cycle_second_step_size;  // nullopt: cycle_first_step_size
  int64_t decay_step_size = 0;
  bool cycle_momentum = true;  // beta1 cycles inversely to the lr, and beta2 is set to 0.99 (DeepSpeed's choice)
  double cycle_min_mom = 0.8;
  double cycle_max_mom = 0.9;
  double decay_mom_rate = 0.0;
  // LRRangeTest
  double lr_range_test_min_lr = 1e-3;
  int64_t lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;
  // DeepSpeed constructor argument: the index of the last batch already seen (-1: fresh start)
  int64_t last_batch_iteration = -1;
};

// ---- precision (runtime/constants.py, fp16/loss_scaler.py) ------------------------------------------------------
struct Fp16Config {
  bool enabled = false;
  // DeepSpeed casts the floating-point inputs of forward() to fp16; a language model's inputs are token ids, which it
  // leaves alone, so the setting changes nothing for the models here.
  bool auto_cast = false;
  double loss_scale = 0.0;  // 0 means dynamic loss scaling
  int initial_scale_power = 16;
  int64_t loss_scale_window = 1000;
  int hysteresis = 2;
  bool consecutive_hysteresis = false;
  double min_loss_scale = 1.0;
  bool fp16_master_weights_and_grads = false;
  // DeepSpeed builds dynamic_loss_args only when one of initial_scale_power, loss_scale_window, min_loss_scale,
  // hysteresis or consecutive_hysteresis appears in the block; without them the ZeRO optimizers start at
  // 2^32 with hysteresis 1 (and FP16_Optimizer at 2^16). See brief §1.4.
  bool has_dynamic_loss_args = false;
};

struct Bf16Config {
  bool enabled = false;
  // DeepSpeed's BF16_Optimizer adds each gradient into its fp32 accumulation buffer as soon as backward produces it
  // instead of after backward: less memory, same sums. Gradients here always go straight into the accumulation
  // buffer, so the setting changes nothing.
  bool immediate_grad_update = false;
};

// ---- zero_optimization (runtime/zero/config.py, offload_config.py) ---------------------------------------------
enum class OffloadDevice { none, cpu, nvme };

struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::none;
  std::string nvme_path;
  int64_t buffer_count = 5;
  int64_t buffer_size = 100000000;  // elements
  int64_t max_in_cpu = 1000000000;
  bool pin_memory = false;
};

struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::none;
  std::string nvme_path;
  int64_t buffer_count = 4;
  bool pin_memory = false;
  bool pipeline_read = false;
  bool pipeline_write = false;
  bool fast_init = false;
  double ratio = 1.0;  // share of sub-groups stepped on CPU; < 1 needs stage 3
};

struct ZeroConfig {
  int stage = 0;
  bool contiguous_gradients = true;
  bool reduce_scatter = true;
  int64_t reduce_bucket_size = 500000000;
  bool use_multi_rank_bucket_allreduce = true;
  bool allgather_partitions = true;
  int64_t allgather_bucket_size = 500000000;
  bool overlap_comm = false;  // resolved: DeepSpeed's default None becomes (stage == 3)
  bool load_from_fp32_weights = true;
  bool elastic_checkpoint = false;
  std::optional<OffloadParamConfig> offload_param;  // absent block (or cpu_offload_param false) = nullopt
  std::optional<OffloadOptimizerConfig> offload_optimizer;
  int64_t sub_group_size = 1000000000;
  // stage-3 knobs; DeepSpeed also accepts each without its "stage3_" prefix
  int64_t stage3_prefetch_bucket_size = 50000000;
  int64_t stage3_param_persistence_threshold = 100000;
  int64_t stage3_model_persistence_threshold = std::numeric_limits<int64_t>::max();  // sys.maxsize
  int64_t stage3_max_live_parameters = 1000000000;
  int64_t stage3_max_reuse_distance = 1000000000;
  bool stage3_gather_16bit_weights_on_model_save = false;
  int64_t stage3_module_granularity_threshold = 0;
  bool stage3_use_all_reduce_for_fetch_params = false;
  bool ignore_unused_parameters = true;
  bool round_robin_gradients = false;
  // ZeRO++ and MiCS
  int64_t zero_hpz_partition_size = 1;
  bool zero_quantized_weights = false;
  bool zero_quantized_nontrainable_weights = false;
  bool zero_quantized_gradients = false;
  int64_t mics_shard_size = -1;
  bool mics_hierarchical_params_gather = false;
  // PyTorch-specific knobs, accepted and without effect here
  bool memory_efficient_linear = true;
  bool pipeline_loading_checkpoint = false;
  bool override_module_apply = true;
  bool log_trace_cache_warnings = false;

  bool offload_param_active() const { return offload_param && offload_param->device != OffloadDevice::none; }
  bool offload_optimizer_active() const {
    return offload_optimizer && offload_optimizer->device != OffloadDevice::none;
  }
};

// ---- other blocks -----------------------------------------------------------------------------------------------
struct AioConfig {  // runtime/swap_tensor/constants.py
  int64_t block_size = 1048576;
  int64_t queue_depth = 8;
  int64_t intra_op_parallelism = 1;  // "thread_count" is its deprecated name
  bool single_submit = false;
  bool overlap_events = true;
  bool use_gds = false;
};

// DeepSpeed's block configures checkpointing; it does not switch it on (the model does, as Megatron's
// --checkpoint-activations or Hugging Face's gradient_checkpointing_enable()). Here `dspeed train
// --checkpoint-activations` sets `enabled`, which is not a JSON key. Every transformer block is then checkpointed
// (Note [Checkpointed forward] in nn/module_runner.cpp).
struct ActivationCheckpointingConfig {
  bool present = false;  // the block appeared in the config
  bool enabled = false;  // set by the caller (dspeed train --checkpoint-activations), never from JSON
  bool partition_activations = false;  // across model-parallel ranks: nothing to split without tensor parallelism
  bool contiguous_memory_optimization = false;  // checkpoints in one buffer: our activation arena always is
  bool cpu_checkpointing = false;  // checkpoints in host memory: where the CPU backend keeps them anyway
  std::optional<int64_t> number_checkpoints;  // with contiguous_memory_optimization: at least the checkpoints taken
  bool synchronize_checkpoint_boundary = false;  // a device synchronisation: nothing to wait for on the CPU
  bool profile = false;  // log the time spent recomputing forwards
};

struct PipelineConfig {
  std::optional<int64_t> stages;  // nullopt = "auto" (one stage unless --pipe-parallel-size says otherwise)
  std::string partition = "best";  // PipelineModule's partition_method: "parameters" ("best"), "uniform", "type:RE"
  std::string schedule = "1f1b";   // ours: "1f1b" (DeepSpeed's TrainSchedule) or "zb-h1" (zero bubble)
  bool seed_layers = false;
  int64_t activation_checkpoint_interval = 0;
  bool pipe_partitioned = true;
  bool grad_partitioned = true;
  bool use_reentrant = true;
};

enum class TagValidation { warn, ignore, fail };

struct CheckpointConfig {
  TagValidation tag_validation = TagValidation::warn;
  bool load_universal = false;
  bool use_node_local_storage = false;
  bool parallel_write_pipeline_stage = false;  // "parallel_write": {"pipeline_stage": ...}
};

struct FlopsProfilerConfig {
  bool enabled = false;
  double recompute_fwd_factor = 0.0;
  int64_t profile_step = 1;
  int64_t module_depth = -1;
  int64_t top_modules = 1;
  bool detailed = true;
  std::string output_file;  // empty = stdout
};

struct MonitorConfig {  // tensorboard and csv_monitor
  bool enabled = false;
  std::string output_path;
  std::string job_name = "DeepSpeedJobName";
};

struct WandbConfig {
  bool enabled = false;
  std::string group;
  std::string team;
  std::string project = "deepspeed";
};

struct CommsLoggerConfig {
  bool enabled = false;
  bool verbose = false;
  bool prof_all = true;
  bool debug = false;
  std::vector<std::string> prof_ops;
};

// ---- "auto" values ----------------------------------------------------------------------------------------------
// Hugging Face's Trainer and accelerate write "auto" where they fill a value from their own arguments before DeepSpeed
// reads the config (transformers/integrations/deepspeed.py: trainer_config_process and trainer_config_finalize).
// dspeed train fills the same keys from its flags; the defaults are its own recipe (examples/ds_config_gpt2_tiny.json).
template <typename T>
struct FlagValue {
  T value{};
  bool given = false;  // set on the command line: a config value that differs is then an error, as in Hugging Face
};

struct AutoValues {
  FlagValue<int64_t> micro_batch{8};       // --micro-batch: train_micro_batch_size_per_gpu
  FlagValue<int64_t> grad_accum{1};        // --grad-accum: gradient_accumulation_steps
  FlagValue<double> lr{2e-3};              // --lr: optimizer.params.lr, scheduler.params.warmup_max_lr
  FlagValue<double> beta1{0.9};            // optimizer.params.betas
  FlagValue<double> beta2{0.95};
  FlagValue<double> eps{1e-8};             // optimizer.params.eps
  FlagValue<double> weight_decay{0.1};     // --weight-decay: optimizer.params.weight_decay
  FlagValue<double> max_grad_norm{1.0};    // --max-grad-norm: gradient_clipping
  FlagValue<int64_t> warmup_steps{50};     // --warmup-steps: warmup_num_steps (not given: 5% of total_num_steps)
  FlagValue<int64_t> total_steps{1000};    // --steps: scheduler.params.total_num_steps
  FlagValue<std::string> precision{"fp32"};  // --precision fp32|fp16|bf16: fp16.enabled, bf16.enabled
  int64_t hidden_size = 0;  // the model's width, for the ZeRO bucket sizes (0: leave those "auto" to the defaults)
};

// DeepSpeed's training AutoTP block ("tensor_parallel": {"autotp_size": N}); 0 and 1 mean no tensor parallelism.
struct TensorParallelConfig {
  int64_t autotp_size = 0;
};

// The job a config is read for: its world size, and the parallel degrees the command line gives (which must agree
// with the config's where both do).
struct JobShape {
  int world = 1;
  std::optional<int> tensor_parallel;    // --tensor-parallel-size
  std::optional<int> pipeline_parallel;  // --pipe-parallel-size
};

// ---- the whole config -------------------------------------------------------------------------------------------
struct DeepSpeedConfig {
  std::string source;     // file path or the name given to parse_config, used in messages
  nlohmann::json json;    // the config as given (checkpoints record it)
  int world_size = 1;     // ranks of the job: dp_world_size x tensor_parallel_size x pipeline_parallel_size
  int dp_world_size = 1;  // data-parallel world size the batch triple was resolved for
  int tensor_parallel_size = 1;    // tensor_parallel.autotp_size or --tensor-parallel-size
  int pipeline_parallel_size = 1;  // pipeline.stages or --pipe-parallel-size

  // Batch triple, always filled and consistent: train = micro * gas * dp_world_size.
  int64_t train_batch_size = 0;
  int64_t train_micro_batch_size_per_gpu = 0;
  int64_t gradient_accumulation_steps = 0;

  OptimizerConfig optimizer;
  SchedulerConfig scheduler;

  double gradient_clipping = 0.0;  // code default (docs say 1.0); 0 disables clipping
  int64_t steps_per_print = 0;     // 0 = never (code default None; docs say 10)
  bool wall_clock_breakdown = false;
  bool memory_breakdown = false;
  bool dump_state = false;
  bool prescale_gradients = false;
  double gradient_predivide_factor = 1.0;
  std::optional<DType> communication_data_type;  // nullopt = the model's dtype
  DType seq_parallel_communication_data_type = DType::f32;
  bool sparse_gradients = false;
  bool dataloader_drop_last = false;
  bool zero_allow_untested_optimizer = false;
  bool zero_force_ds_cpu_optimizer = true;

  Fp16Config fp16;
  Bf16Config bf16;
  ZeroConfig zero;
  AioConfig aio;
  ActivationCheckpointingConfig activation_checkpointing;
  PipelineConfig pipeline;
  TensorParallelConfig tensor_parallel;
  CheckpointConfig checkpoint;
  FlopsProfilerConfig flops_profiler;
  MonitorConfig tensorboard;
  MonitorConfig csv_monitor;
  WandbConfig wandb;
  CommsLoggerConfig comms_logger;
  std::optional<DType> grad_accum_dtype;  // data_types.grad_accum_dtype; nullopt = DeepSpeed's rule (brief §1.4)

  // Settings that were accepted but are not implemented (yet), deprecated names, and similar notes.
  // Each was also logged once with ds::log_warning when the config was loaded.
  std::vector<std::string> warnings;
  // The "auto" values filled from AutoValues, one "'key' = value (--flag)" each, in the order of the rules.
  std::vector<std::string> auto_resolved;

  // The effective batch triple, optimizer, scheduler and main switches, several lines.
  std::string summary() const;
};

// Reads a ds_config.json file (at most 16 MiB). Throws IoError when it cannot be read, ConfigError when it is
// invalid. With `autos`, "auto" values are filled from it; without, they keep DeepSpeed's defaults (and "auto" batch
// sizes are an error, since nothing could choose them).
// The batch triple is resolved for the data-parallel size: the job's world size divided by the tensor- and
// pipeline-parallel degrees (a ConfigError when they do not divide it). An int job is a world of that many ranks.
DeepSpeedConfig load_config_file(const std::string& path, const JobShape& job, const AutoValues* autos = nullptr);
// Parses the text of a config (JSON with hjson's comments and trailing commas); source_name names it in messages.
DeepSpeedConfig parse_config(const std::string& json_text, const JobShape& job,
                             const std::string& source_name = "ds_config.json", const AutoValues* autos = nullptr);
inline DeepSpeedConfig load_config_file(const std::string& path, int world, const AutoValues* autos = nullptr) {
  return load_config_file(path, JobShape{world, std::nullopt, std::nullopt}, autos);
}
inline DeepSpeedConfig parse_config(const std::string& json_text, int world,
                                    const std::string& source_name = "ds_config.json",
                                    const AutoValues* autos = nullptr) {
  return parse_config(json_text, JobShape{world, std::nullopt, std::nullopt}, source_name, autos);
}

std::string_view scheduler_type_name(SchedulerType t);
std::string_view offload_device_name(OffloadDevice d);

}  // namespace ds::config
