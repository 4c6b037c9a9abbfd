// Parser for "zero_optimization" and its offload_param / offload_optimizer blocks (runtime/zero/config.py and
// offload_config.py, code defaults; brief §1.5). DeepSpeed's pydantic model forbids unknown keys here, accepts each
// stage-3 knob with or without its "stage3_" prefix, and maps the deprecated cpu_offload* names onto the offload
// blocks; giving a deprecated name together with its replacement is an error there and here.
#include "ds/config/config_blocks.h"

#include "ds/core/error.h"

#include <fmt/format.h>

namespace ds::config::detail {

namespace {

// DeepSpeed accepts both the field name and its alias (populate_by_name); both at once would be ambiguous.
template <typename T>
void read_either(BlockReader& r, std::string_view name, std::string_view alias, T& out, Support s = Support::implemented) {
  DS_CHECK_AS(ConfigError, !(r.has(name) && r.has(alias)),
              "[config] '{}' and '{}' in {} are the same setting (DeepSpeed accepts both names); keep only '{}'",
              r.key_name(name), r.key_name(alias), r.ctx().source, name);
  r.read(name, out, s, 0);
  r.read(alias, out, s, 0);
}

template <>
void read_either<bool>(BlockReader& r, std::string_view name, std::string_view alias, bool& out, Support s) {
  DS_CHECK_AS(ConfigError, !(r.has(name) && r.has(alias)),
              "[config] '{}' and '{}' in {} are the same setting (DeepSpeed accepts both names); keep only '{}'",
              r.key_name(name), r.key_name(alias), r.ctx().source, name);
  r.read(name, out, s);
  r.read(alias, out, s);
}

void check_not_both(BlockReader& r, std::string_view old_name, std::string_view new_name) {
  DS_CHECK_AS(ConfigError, !(r.has(old_name) && r.has(new_name)),
              "[config] '{}' is the deprecated form of '{}' in {}; DeepSpeed refuses both together: keep only '{}'",
              r.key_name(old_name), r.key_name(new_name), r.ctx().source, new_name);
}

void deprecated(BlockReader& r, std::string_view old_name, std::string_view new_name) {
  r.ctx().warn(fmt::format("[config] '{}' in {} is deprecated; use '{}'", r.key_name(old_name), r.ctx().source,
                           r.key_name(new_name)));
}

OffloadDevice read_device(BlockReader& r) {
  size_t index = 0;
  r.read_choice("device", index, {"none", "cpu", "nvme"});
  return static_cast<OffloadDevice>(index);
}

void require_nvme_path(BlockReader& r, OffloadDevice device, const std::string& path) {
  DS_CHECK_AS(ConfigError, device != OffloadDevice::nvme || !path.empty(),
              "[config] '{}' in {} has device 'nvme' but no 'nvme_path'; add \"nvme_path\": \"/local_nvme\" (a "
              "directory on the NVMe drive)", r.path(), r.ctx().source);
}

void parse_offload_param(BlockReader r, std::optional<OffloadParamConfig>& out) {
  if (!r.present()) return;
  OffloadParamConfig c;
  c.device = read_device(r);
  r.read("nvme_path", c.nvme_path);
  r.read("buffer_count", c.buffer_count, Support::implemented, 0);
  r.read("buffer_size", c.buffer_size, Support::implemented, 0);
  r.read("max_in_cpu", c.max_in_cpu, Support::implemented, 0);
  r.read("pin_memory", c.pin_memory);
  r.finish();
  require_nvme_path(r, c.device, c.nvme_path);
  out = c;
}

void parse_offload_optimizer(BlockReader r, std::optional<OffloadOptimizerConfig>& out) {
  if (!r.present()) return;
  OffloadOptimizerConfig c;
  c.device = read_device(r);
  r.read("nvme_path", c.nvme_path);
  r.read("buffer_count", c.buffer_count, Support::implemented, 0);
  r.read("pin_memory", c.pin_memory);
  r.read("pipeline_read", c.pipeline_read);
  r.read("pipeline_write", c.pipeline_write);
  r.read("fast_init", c.fast_init);
  r.read("ratio", c.ratio, Support::implemented, 0.0, 1.0);
  r.finish();
  require_nvme_path(r, c.device, c.nvme_path);
  out = c;
}

}  // namespace

void parse_zero(BlockReader r, ZeroConfig& out) {
  out.overlap_comm = false;
  if (!r.present()) return;
  r.read("stage", out.stage, Support::implemented, 0, 3);
  r.read("contiguous_gradients", out.contiguous_gradients);
  r.read("reduce_scatter", out.reduce_scatter);
  r.read("reduce_bucket_size", out.reduce_bucket_size, Support::implemented, 0);
  r.read("use_multi_rank_bucket_allreduce", out.use_multi_rank_bucket_allreduce);
  r.read("allgather_partitions", out.allgather_partitions);
  r.read("allgather_bucket_size", out.allgather_bucket_size, Support::implemented, 0);
  bool overlap_comm = out.stage == 3;  // DeepSpeed: None -> (stage == 3); the docs say false
  r.read("overlap_comm", overlap_comm);
  out.overlap_comm = overlap_comm;
  r.read("load_from_fp32_weights", out.load_from_fp32_weights);
  r.read("elastic_checkpoint", out.elastic_checkpoint, Support::not_yet);
  r.read("sub_group_size", out.sub_group_size, Support::implemented, 0);

  check_not_both(r, "cpu_offload", "offload_optimizer");
  check_not_both(r, "cpu_offload_param", "offload_param");
  parse_offload_param(r.child("offload_param"), out.offload_param);
  parse_offload_optimizer(r.child("offload_optimizer"), out.offload_optimizer);
  bool flag = false;
  if (r.read("cpu_offload", flag)) {
    deprecated(r, "cpu_offload", "offload_optimizer");
    if (flag) {
      out.offload_optimizer.emplace();
      out.offload_optimizer->device = OffloadDevice::cpu;
    }
  }
  flag = false;
  if (r.read("cpu_offload_param", flag)) {
    deprecated(r, "cpu_offload_param", "offload_param");
    if (flag) {
      out.offload_param.emplace();
      out.offload_param->device = OffloadDevice::cpu;
    }
  }
  flag = false;
  if (r.read("cpu_offload_use_pin_memory", flag)) {  // DeepSpeed only warns; the value goes nowhere
    r.ctx().warn(fmt::format("[config] 'zero_optimization.cpu_offload_use_pin_memory' in {} is deprecated and has no "
                             "effect; set pin_memory inside offload_param / offload_optimizer", r.ctx().source));
  }

  read_either(r, "stage3_prefetch_bucket_size", "prefetch_bucket_size", out.stage3_prefetch_bucket_size);
  read_either(r, "stage3_param_persistence_threshold", "param_persistence_threshold",
              out.stage3_param_persistence_threshold);
  read_either(r, "stage3_model_persistence_threshold", "model_persistence_threshold",
              out.stage3_model_persistence_threshold, Support::not_yet);
  read_either(r, "stage3_max_live_parameters", "max_live_parameters", out.stage3_max_live_parameters);
  read_either(r, "stage3_max_reuse_distance", "max_reuse_distance", out.stage3_max_reuse_distance);
  check_not_both(r, "stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save");
  check_not_both(r, "stage3_gather_fp16_weights_on_model_save", "gather_16bit_weights_on_model_save");
  read_either(r, "stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
              out.stage3_gather_16bit_weights_on_model_save);
  if (r.read("stage3_gather_fp16_weights_on_model_save", out.stage3_gather_16bit_weights_on_model_save)) {
    deprecated(r, "stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save");
  }
  DS_CHECK_AS(ConfigError, !(r.has("stage3_module_granularity_threshold") && r.has("module_granularity_threshold")),
              "[config] 'zero_optimization.stage3_module_granularity_threshold' and "
              "'zero_optimization.module_granularity_threshold' in {} are the same setting; keep only one",
              r.ctx().source);
  r.read("stage3_module_granularity_threshold", out.stage3_module_granularity_threshold);
  r.read("module_granularity_threshold", out.stage3_module_granularity_threshold);
  read_either(r, "stage3_use_all_reduce_for_fetch_params", "use_all_reduce_for_fetch_params",
              out.stage3_use_all_reduce_for_fetch_params);

  r.read("ignore_unused_parameters", out.ignore_unused_parameters);
  bool legacy_stage1 = false;
  r.read("legacy_stage1", legacy_stage1);
  DS_CHECK_AS(ConfigError, !legacy_stage1,
              "[config] 'zero_optimization.legacy_stage1' = true in {} is not supported (DeepSpeed removed the legacy "
              "stage 1 and raises too); remove it", r.ctx().source);
  r.read("round_robin_gradients", out.round_robin_gradients, Support::not_yet);
  r.read("zero_hpz_partition_size", out.zero_hpz_partition_size, Support::implemented, 0);  // ZeRO++ (stage 3)
  r.read("zero_quantized_weights", out.zero_quantized_weights);
  r.read("zero_quantized_nontrainable_weights", out.zero_quantized_nontrainable_weights, Support::not_yet);
  r.read("zero_quantized_gradients", out.zero_quantized_gradients);
  r.accept_unmodelled("zeropp_loco_param");
  r.read("mics_shard_size", out.mics_shard_size, Support::not_yet, -1);
  r.read("mics_hierarchical_params_gather", out.mics_hierarchical_params_gather, Support::not_yet);
  r.read("memory_efficient_linear", out.memory_efficient_linear);
  r.read("pipeline_loading_checkpoint", out.pipeline_loading_checkpoint);
  r.read("override_module_apply", out.override_module_apply);
  r.read("log_trace_cache_warnings", out.log_trace_cache_warnings);
  r.hint("grad_hooks", "DeepSpeed documents it, but it is not a zero_optimization field and DeepSpeed rejects it too");
  r.finish();

  // ---- cross-key checks and what is not implemented yet ----
  const std::string& src = r.ctx().source;
  if (out.offload_param_active() && out.stage != 3) {  // DeepSpeed reads offload_param only at stage 3
    r.ctx().ignored.push_back(fmt::format("'zero_optimization.offload_param' (device '{}': only stage 3 partitions, "
                                          "and so offloads, parameters; this is stage {})",
                                          offload_device_name(out.offload_param->device), out.stage));
    out.offload_param.reset();
  }
  // ZeRO++ quantizes and places stage 3's collectives; the other stages have none of them.
  if (out.stage != 3) {
    if (out.zero_quantized_weights)
      r.ctx().ignored.push_back("'zero_optimization.zero_quantized_weights' (stage 3 only)");
    if (out.zero_quantized_gradients)
      r.ctx().ignored.push_back("'zero_optimization.zero_quantized_gradients' (stage 3 only)");
    if (out.zero_hpz_partition_size > 1)
      r.ctx().ignored.push_back("'zero_optimization.zero_hpz_partition_size' (stage 3 only)");
  }
  if (out.offload_optimizer) {
    DS_CHECK_AS(ConfigError, out.offload_optimizer->ratio >= 1.0 || out.stage == 3,
                "[config] 'zero_optimization.offload_optimizer.ratio' = {} in {} needs zero_optimization.stage 3, "
                "found stage {} (DeepSpeed: \"Partial offloading only supported for ZeRO Stage 3\"); set ratio to 1 "
                "or use stage 3", out.offload_optimizer->ratio, src, out.stage);
  }
  if (out.offload_optimizer_active()) {
    DS_CHECK_AS(ConfigError, out.stage >= 1,
                "[config] 'zero_optimization.offload_optimizer' (device '{}') in {} needs ZeRO stage 1, 2 or 3, found "
                "stage 0; set \"stage\" or remove offload_optimizer",
                offload_device_name(out.offload_optimizer->device), src);
    // DeepSpeed treats 'nvme' as 'cpu' below stage 3 (stage_1_and_2.py); here the state is swapped at every stage.
    if (out.offload_optimizer->ratio < 1.0) {
      r.ctx().warn(fmt::format("[config] 'zero_optimization.offload_optimizer.ratio' = {} in {} keeps a share of the "
                               "optimizer on the accelerator (Twin-Flow); this build steps every sub-group where the "
                               "offloaded state lives, as with ratio 1",
                               out.offload_optimizer->ratio, src));
    }
  }
  if (out.stage == 1 || out.stage == 2) {
    DS_CHECK_AS(ConfigError, out.allgather_bucket_size % 2 == 0,
                "[config] 'zero_optimization.allgather_bucket_size' ({}) in {} must be a multiple of 2 for stages 1 "
                "and 2 (NCCL start alignment)", out.allgather_bucket_size, src);
  }
}

}  // namespace ds::config::detail
