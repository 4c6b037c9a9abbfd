// Internal to the config parser: one function per ds_config.json block, each reading its keys with a BlockReader
// and rejecting unknown ones. config.cpp calls them; cross-block checks (fp16 vs bf16, fp16 master weights vs ZeRO
// stage) stay in config.cpp, which is the only place that sees the whole config.
#pragma once

#include "ds/config/config.h"
#include "ds/config/config_reader.h"

namespace ds::config::detail {

void parse_optimizer(BlockReader r, OptimizerConfig& out);
void parse_scheduler(BlockReader r, SchedulerConfig& out);
void parse_fp16(BlockReader r, Fp16Config& out);
void parse_bf16(BlockReader r, Bf16Config& out);
void parse_zero(BlockReader r, ZeroConfig& out);  // config_zero.cpp
void parse_aio(BlockReader r, AioConfig& out);
void parse_activation_checkpointing(BlockReader r, ActivationCheckpointingConfig& out);
void parse_pipeline(BlockReader r, PipelineConfig& out);
void parse_tensor_parallel(BlockReader r, TensorParallelConfig& out);
void parse_checkpoint(BlockReader r, CheckpointConfig& out);
void parse_flops_profiler(BlockReader r, FlopsProfilerConfig& out);
void parse_monitor(BlockReader r, MonitorConfig& out);
void parse_wandb(BlockReader r, WandbConfig& out);
void parse_comms_logger(BlockReader r, CommsLoggerConfig& out);
void parse_data_types(BlockReader r, std::optional<DType>& grad_accum_dtype);
// "fp16" / "bf16" / "fp32" (case-insensitive, as DeepSpeed lower-cases) read from `key` of `r`.
bool read_dtype(BlockReader& r, std::string_view key, std::optional<DType>& out);

}  // namespace ds::config::detail
