// Entry points of the ds_config.json parser: JSON text -> DeepSpeedConfig. Owns the syntax layer (DeepSpeed reads
// config files with hjson; we take JSON plus hjson's comments and trailing commas, and bound size and nesting), the
// top-level keys, DeepSpeed's batch-size arithmetic (config.py::_set_batch_related_parameters, integer division,
// brief §1.2) and the cross-block checks.
// Batch errors explain which value could not be derived and why, rather than DeepSpeed's bare "64 != 4 * 8 * 1".
#include "ds/config/config.h"

#include "ds/core/error.h"
#include "ds/core/json_input.h"
#include "ds/core/log.h"
#include "ds/config/config_auto.h"
#include "ds/config/config_blocks.h"
#include "ds/config/config_reader.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

namespace ds::config {

using config::detail::BlockReader;
using config::detail::Keys;
using config::detail::ParseContext;
using config::detail::Support;
using nlohmann::json;

std::string_view scheduler_type_name(SchedulerType t) {
  switch (t) {
    case SchedulerType::none: return "none";
    case SchedulerType::warmup_lr: return "WarmupLR";
    case SchedulerType::warmup_decay_lr: return "WarmupDecayLR";
    case SchedulerType::warmup_cosine_lr: return "WarmupCosineLR";
    case SchedulerType::one_cycle: return "OneCycle";
    case SchedulerType::lr_range_test: return "LRRangeTest";
  }
  return "?";
}

std::string_view offload_device_name(OffloadDevice d) {
  switch (d) {
    case OffloadDevice::none: return "none";
    case OffloadDevice::cpu: return "cpu";
    case OffloadDevice::nvme: return "nvme";
  }
  return "?";
}

namespace {

// ---- JSON syntax ------------------------------------------------------------------------------------------------

// Duplicate keys are found with the SAX-style parser callback: one set of seen keys per open object.
struct DuplicateFinder {
  struct Frame {
    std::string path;
    std::vector<std::string> keys;
    std::string last_key;
  };
  std::vector<Frame> stack;
  std::string duplicate;  // full path of the first duplicate, empty if none

  std::string child_path() const {
    if (stack.empty()) return "";
    const Frame& top = stack.back();
    if (top.last_key.empty()) return top.path;  // inside an array
    return config::detail::join_key(top.path, top.last_key);
  }

  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start: {
        Frame f{child_path(), {}, {}};
        if (event == json::parse_event_t::array_start) f.path += "[]";
        stack.push_back(std::move(f));
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& top = stack.back();
        const std::string key = parsed.get<std::string>();
        if (duplicate.empty() && std::find(top.keys.begin(), top.keys.end(), key) != top.keys.end()) {
          duplicate = config::detail::join_key(top.path, key);
        }
        top.keys.push_back(key);
        top.last_key = key;
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  }
};

constexpr size_t kMaxConfigBytes = size_t(16) << 20;
constexpr int kMaxConfigDepth = 64;

// hjson's extensions that DeepSpeed's own snippets use: '//', '#' and '/* */' comments and a comma before '}' or
// ']'. Each is overwritten with spaces (newlines kept), so the JSON parser's offsets stay those of the file.
std::string blank_hjson_extras(std::string text) {
  scan_outside_json_strings(text, [&](size_t& i) {
    const char ch = text[i];
    if (ch == '#' || (ch == '/' && i + 1 < text.size() && text[i + 1] == '/')) {
      for (; i < text.size() && text[i] != '\n'; ++i) text[i] = ' ';
    } else if (ch == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      const size_t end = text.find("*/", i + 2);
      const size_t stop = end == std::string::npos ? text.size() : end + 2;
      for (; i < stop; ++i)
        if (text[i] != '\n') text[i] = ' ';
      --i;
    }
  });
  // Trailing commas, now that no comment can sit between the comma and the bracket.
  scan_outside_json_strings(text, [&](size_t& i) {
    if (text[i] != ',') return;
    size_t j = i + 1;
    while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    if (j < text.size() && (text[j] == '}' || text[j] == ']')) text[i] = ' ';
  });
  return text;
}

// hjson's other extension in DeepSpeed's tutorials: a line break instead of the comma between two members or list
// values. Where a value ends, a line break follows and another member or value starts, a comma is inserted (in
// plain JSON the two can never touch, so valid text is unchanged). `inserted` gets the offsets of the commas in
// the returned text, to map parser offsets back onto the file.
std::string insert_line_break_commas(const std::string& text, std::vector<size_t>& inserted) {
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false, newline_since = false;
  char last = 0;         // the last significant character outside strings ('"' for a string's end)
  size_t last_out = 0;   // where it is in `out`
  auto is_value_end = [](char c) {
    return c == '"' || c == '}' || c == ']' || std::isdigit(static_cast<unsigned char>(c)) || c == 'e' || c == 'l';
  };
  auto is_value_start = [](char c) {
    return c == '"' || c == '{' || c == '[' || c == '-' || std::isdigit(static_cast<unsigned char>(c)) || c == 't' ||
           c == 'f' || c == 'n';
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out.push_back(ch);
      if (ch == '\\' && i + 1 < text.size()) {
        out.push_back(text[++i]);
      } else if (ch == '"') {
        in_string = false;
        last = '"';
        last_out = out.size() - 1;
        newline_since = false;
      }
      continue;
    }
    if (std::isspace(static_cast<unsigned char>(ch))) {
      newline_since = newline_since || ch == '\n';
      out.push_back(ch);
      continue;
    }
    if (newline_since && is_value_end(last) && is_value_start(ch)) {
      out.insert(out.begin() + static_cast<std::ptrdiff_t>(last_out + 1), ',');
      inserted.push_back(last_out + 1);
    }
    out.push_back(ch);
    if (ch == '"') {
      in_string = true;
    } else {
      last = ch;
      last_out = out.size() - 1;
    }
    newline_since = false;
  }
  return out;
}

json parse_json_text(const std::string& raw_text, const std::string& source) {
  // Bounded before anything walks it: the parser, its callback and dump() would follow any depth (json_input.h).
  // Comments are blanked first (a bracket in a comment does not nest; blanking keeps the length), at most one byte
  // past the size limit of the text, so that an oversized one is still refused as such.
  JsonLimits limits;
  limits.max_bytes = kMaxConfigBytes;
  limits.max_depth = kMaxConfigDepth;
  const std::string blanked = blank_hjson_extras(raw_text.substr(0, kMaxConfigBytes + 1));
  const std::string problem = json_bounds_problem(blanked, limits);
  DS_CHECK_AS(ConfigError, problem.empty(), "[config] {}: {}; a DeepSpeed config is a few KiB, 4 levels deep: check "
              "that this is the config file (at most {} MiB and {} levels are read)", source, problem,
              kMaxConfigBytes >> 20, kMaxConfigDepth);
  std::vector<size_t> inserted;
  const std::string text = insert_line_break_commas(blanked, inserted);
  DuplicateFinder finder;
  json root;
  try {
    root = json::parse(text, std::ref(finder), /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based offset of the character that failed; turn it into line and column of the file.
    size_t byte = std::min<size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    byte -= static_cast<size_t>(std::lower_bound(inserted.begin(), inserted.end(), byte) - inserted.begin());
    byte = std::min(byte, raw_text.size());
    size_t line = 1, column = 1;
    for (size_t i = 0; i < byte; ++i) {
      if (raw_text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    std::string detail = e.what();
    const size_t syntax = detail.find("syntax error");
    if (syntax != std::string::npos) detail = detail.substr(syntax);
    DS_THROW(ConfigError, "[config] {} is not valid JSON: line {}, column {}: {}; fix the syntax there (comments, "
             "trailing commas and line breaks between members are allowed, as in DeepSpeed's hjson; single quotes and "
             "unquoted keys or strings are not)", source, line, column, detail);
  } catch (const json::exception& e) {  // a number past a double's range, e.g. 1e400
    std::string detail = e.what();
    const size_t bracket = detail.find("] ");
    if (bracket != std::string::npos) detail = detail.substr(bracket + 2);
    DS_THROW(ConfigError, "[config] {} holds a number out of range ({}); numbers must fit a double: fix that value",
             source, detail);
  }
  DS_CHECK_AS(ConfigError, finder.duplicate.empty(),
              "[config] duplicate key '{}' in {}; DeepSpeed rejects duplicate keys too: keep one of them",
              finder.duplicate, source);
  DS_CHECK_AS(ConfigError, root.is_object(), "[config] {} must hold a JSON object ({{ ... }}) at the top; found {}",
              source, config::detail::render(root));
  return root;
}

// ---- batch arithmetic -------------------------------------------------------------------------------------------

void resolve_batch(std::optional<int64_t> train, std::optional<int64_t> micro, std::optional<int64_t> gas, int world,
                   bool any_auto, const std::string& src, DeepSpeedConfig& c) {
  const int64_t W = world;
  // Bounded so that no product below overflows: 2^40 samples per batch is far past any real run.
  constexpr int64_t kMaxBatch = int64_t(1) << 40;
  for (const auto& [name, value] : {std::pair{"train_batch_size", train},
                                    std::pair{"train_micro_batch_size_per_gpu", micro},
                                    std::pair{"gradient_accumulation_steps", gas}}) {
    DS_CHECK_AS(ConfigError, !value || *value <= kMaxBatch, "[config] '{}' is {} in {}; at most 2^40 is accepted: "
                "check the value", name, *value, src);
  }
  const double product = double(micro.value_or(1)) * double(gas.value_or(1)) * double(W);
  DS_CHECK_AS(ConfigError, product <= double(kMaxBatch),
              "[config] train_micro_batch_size_per_gpu x gradient_accumulation_steps x data-parallel size is {:.3g} in "
              "{}; at most 2^40 samples per batch are accepted: check the values", product, src);
  if (train && micro && gas) {
    DS_CHECK_AS(ConfigError, *train == *micro * *gas * W,
                "[config] train_batch_size ({}) must equal train_micro_batch_size_per_gpu ({}) × "
                "gradient_accumulation_steps ({}) × data-parallel world size ({}) = {} in {}; fix one of the three or "
                "drop train_batch_size to have it derived", *train, *micro, *gas, W, *micro * *gas * W, src);
  } else if (train && micro) {
    gas = *train / *micro / W;
    DS_CHECK_AS(ConfigError, *gas > 0 && *train == *micro * *gas * W,
                "[config] cannot derive gradient_accumulation_steps in {}: train_batch_size ({}) must be a positive "
                "multiple of train_micro_batch_size_per_gpu ({}) × data-parallel world size ({}) = {}; change one of "
                "them or set gradient_accumulation_steps explicitly", src, *train, *micro, W, *micro * W);
  } else if (train && gas) {
    micro = *train / W / *gas;
    DS_CHECK_AS(ConfigError, *micro > 0 && *train == *micro * *gas * W,
                "[config] cannot derive train_micro_batch_size_per_gpu in {}: train_batch_size ({}) must be a positive "
                "multiple of gradient_accumulation_steps ({}) × data-parallel world size ({}) = {}; change one of them "
                "or set train_micro_batch_size_per_gpu explicitly", src, *train, *gas, W, *gas * W);
  } else if (micro && gas) {
    train = *micro * *gas * W;
  } else if (train) {
    gas = 1;
    micro = *train / W;
    DS_CHECK_AS(ConfigError, *micro > 0 && *train == *micro * W,
                "[config] cannot derive train_micro_batch_size_per_gpu in {}: train_batch_size ({}) must be a positive "
                "multiple of the data-parallel world size ({}) when gradient_accumulation_steps is not given; change "
                "train_batch_size or set train_micro_batch_size_per_gpu", src, *train, W);
  } else if (micro) {
    train = *micro * W;
    gas = 1;
  } else if (any_auto) {
    DS_THROW(ConfigError, "[config] {} leaves the batch size to \"auto\", which the program reading the config fills "
             "(dspeed train: --micro-batch and --grad-accum); here nothing fills it: give "
             "train_micro_batch_size_per_gpu or train_batch_size as a number", src);
  } else {
    DS_THROW(ConfigError, "[config] {} sets neither train_batch_size nor train_micro_batch_size_per_gpu; add at least "
             "one of them, e.g. \"train_micro_batch_size_per_gpu\": 8 (gradient_accumulation_steps alone is not "
             "enough)", src);
  }
  c.train_batch_size = *train;
  c.train_micro_batch_size_per_gpu = *micro;
  c.gradient_accumulation_steps = *gas;
}

// Real DeepSpeed top-level settings that deepspeed.cpp does not model: accepted, and listed among the features not
// implemented when switched on.
constexpr std::string_view kUnmodelledTopLevel[] = {
    "amp", "torch_autocast", "compression_training", "autotuning", "eigenvalue", "progressive_layer_drop",
    "curriculum_learning", "data_efficiency", "elasticity", "nebula", "weight_quantization", "compile", "timers",
    "hybrid_engine", "sparse_attention", "graph_harvesting",
    "use_data_before_expert_parallel_", "disable_allgather", "vocabulary_size", "quantize_training", "moe",
    "expert_parallel"};

}  // namespace

// ---- top level --------------------------------------------------------------------------------------------------

DeepSpeedConfig parse_config(const std::string& json_text, const JobShape& job, const std::string& source_name,
                             const AutoValues* autos) {
  DS_CHECK_AS(ConfigError, job.world >= 1, "[config] the world size must be at least 1; found {}", job.world);
  json root = parse_json_text(json_text, source_name);
  ParseContext ctx{source_name, {}, {}, {}, {}};
  DeepSpeedConfig c;
  c.source = source_name;
  c.world_size = job.world;
  // The degrees come first: the batch triple (and its "auto" values) are per data-parallel rank.
  config::detail::parse_tensor_parallel(BlockReader(&root, "", ctx, Keys::lenient).child("tensor_parallel",
                                                                                        Keys::lenient),
                                        c.tensor_parallel);
  c.tensor_parallel_size = static_cast<int>(std::max<int64_t>(1, c.tensor_parallel.autotp_size));
  config::detail::parse_pipeline(BlockReader(&root, "", ctx, Keys::lenient).child("pipeline", Keys::lenient),
                                 c.pipeline);
  DS_CHECK_AS(ConfigError, c.pipeline.stages.value_or(1) <= 4096, "[config] 'pipeline.stages' in {} is {}; at most "
              "4096 stages", source_name, c.pipeline.stages.value_or(1));
  c.pipeline_parallel_size = static_cast<int>(c.pipeline.stages.value_or(1));
  if (job.pipeline_parallel) {
    DS_CHECK_AS(ConfigError, !c.pipeline.stages || *job.pipeline_parallel == c.pipeline_parallel_size,
                "[config] --pipe-parallel-size {} disagrees with 'pipeline.stages' = {} in {}; give the number of "
                "stages in one place", *job.pipeline_parallel, c.pipeline_parallel_size, source_name);
    DS_CHECK_AS(ConfigError, *job.pipeline_parallel >= 1, "[config] --pipe-parallel-size must be at least 1; found "
                "{}", *job.pipeline_parallel);
    c.pipeline_parallel_size = *job.pipeline_parallel;
  }
  if (job.tensor_parallel) {
    DS_CHECK_AS(ConfigError, c.tensor_parallel.autotp_size <= 1 || *job.tensor_parallel == c.tensor_parallel_size,
                "[config] --tensor-parallel-size {} disagrees with 'tensor_parallel.autotp_size' = {} in {}; give the "
                "size in one place", *job.tensor_parallel, c.tensor_parallel.autotp_size, source_name);
    DS_CHECK_AS(ConfigError, *job.tensor_parallel >= 1, "[config] --tensor-parallel-size must be at least 1; found "
                "{}", *job.tensor_parallel);
    c.tensor_parallel_size = *job.tensor_parallel;
  }
  const int model_ranks = c.tensor_parallel_size * c.pipeline_parallel_size;
  DS_CHECK_AS(ConfigError, job.world % model_ranks == 0,
              "[config] {} rank(s) cannot be split into {} pipeline stage(s) x {} tensor-parallel rank(s) ({}): the "
              "world size must be a multiple of {}; launch a multiple of {} ranks or change the degrees",
              job.world, c.pipeline_parallel_size, c.tensor_parallel_size, source_name, model_ranks, model_ranks);
  const int dp_world_size = job.world / model_ranks;
  c.dp_world_size = dp_world_size;
  if (autos != nullptr) {
    config::detail::resolve_auto(root, dp_world_size, *autos, source_name, c.auto_resolved, ctx.warnings);
  }
  c.json = root;  // as resolved: checkpoints record the values the run used

  BlockReader top(&root, "", ctx, Keys::lenient);
  std::optional<int64_t> train, micro, gas;
  top.read("train_batch_size", train, Support::implemented, 1);
  top.read("train_micro_batch_size_per_gpu", micro, Support::implemented, 1);
  top.read("gradient_accumulation_steps", gas, Support::implemented, 1);

  config::detail::parse_optimizer(top.child("optimizer", Keys::lenient), c.optimizer);
  config::detail::parse_scheduler(top.child("scheduler", Keys::lenient), c.scheduler);
  top.read("zero_allow_untested_optimizer", c.zero_allow_untested_optimizer);
  top.read("zero_force_ds_cpu_optimizer", c.zero_force_ds_cpu_optimizer);

  top.read("gradient_clipping", c.gradient_clipping, Support::implemented, 0.0);
  top.read("steps_per_print", c.steps_per_print, Support::implemented, 0);
  top.read("wall_clock_breakdown", c.wall_clock_breakdown, Support::not_yet);
  top.read("memory_breakdown", c.memory_breakdown, Support::not_yet);
  top.read("dump_state", c.dump_state, Support::not_yet);
  top.read("prescale_gradients", c.prescale_gradients, Support::not_yet);
  top.read("gradient_predivide_factor", c.gradient_predivide_factor, Support::not_yet, 0.0);
  top.read("sparse_gradients", c.sparse_gradients, Support::not_yet);
  top.read("dataloader_drop_last", c.dataloader_drop_last, Support::not_yet);
  if (config::detail::read_dtype(top, "communication_data_type", c.communication_data_type)) {
    ctx.not_implemented.push_back(fmt::format("'communication_data_type' = '{}' (gradients are communicated in "
                                              "their accumulation dtype, data_types.grad_accum_dtype)",
                                              dtype_name(*c.communication_data_type)));
  }
  std::optional<DType> seq_dtype;
  if (config::detail::read_dtype(top, "seq_parallel_communication_data_type", seq_dtype)) {
    c.seq_parallel_communication_data_type = *seq_dtype;
    if (*seq_dtype != DType::f32) {
      ctx.not_implemented.push_back(fmt::format("'seq_parallel_communication_data_type' = '{}'",
                                                dtype_name(*seq_dtype)));
    }
  }

  config::detail::parse_fp16(top.child("fp16", Keys::lenient), c.fp16);
  DS_CHECK_AS(ConfigError, !(top.has("bf16") && top.has("bfloat16")),
              "[config] both 'bf16' and its legacy name 'bfloat16' are set in {}; keep only 'bf16'", source_name);
  config::detail::parse_bf16(top.child("bf16", Keys::lenient), c.bf16);
  if (top.has("bfloat16")) {
    config::detail::parse_bf16(top.child("bfloat16", Keys::lenient), c.bf16);
  } else {
    top.raw("bfloat16");
  }
  config::detail::parse_zero(top.child("zero_optimization"), c.zero);
  config::detail::parse_aio(top.child("aio", Keys::lenient), c.aio);
  config::detail::parse_activation_checkpointing(top.child("activation_checkpointing", Keys::lenient),
                                                 c.activation_checkpointing);
  top.raw("pipeline");         // read above
  top.raw("tensor_parallel");  // read above
  config::detail::parse_checkpoint(top.child("checkpoint", Keys::lenient), c.checkpoint);
  config::detail::parse_flops_profiler(top.child("flops_profiler", Keys::lenient), c.flops_profiler);
  config::detail::parse_monitor(top.child("tensorboard"), c.tensorboard);
  config::detail::parse_monitor(top.child("csv_monitor"), c.csv_monitor);
  config::detail::parse_wandb(top.child("wandb"), c.wandb);
  if (const json* comet = top.raw("comet"); comet != nullptr && comet->is_object()) {
    const auto it = comet->find("enabled");
    if (it != comet->end() && *it == true) {
      ctx.not_implemented.push_back("'comet.enabled' = true (Comet needs its network service; the metrics go to "
                                    "metrics.csv, and to the tensorboard and csv_monitor blocks)");
    }
  }
  config::detail::parse_comms_logger(top.child("comms_logger"), c.comms_logger);
  config::detail::parse_data_types(top.child("data_types", Keys::lenient), c.grad_accum_dtype);
  for (std::string_view key : kUnmodelledTopLevel) top.accept_unmodelled(key);
  top.finish();

  bool any_auto = false;
  for (const char* key : {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}) {
    auto it = root.find(key);
    any_auto = any_auto || (it != root.end() && *it == "auto");
  }
  resolve_batch(train, micro, gas, dp_world_size, any_auto, source_name, c);

  // ---- cross-block checks (config.py::_do_error_check and friends) ----
  DS_CHECK_AS(ConfigError, !(c.fp16.enabled && c.bf16.enabled),
              "[config] fp16.enabled and bf16.enabled are both true in {}; DeepSpeed allows only one of them: disable "
              "one", source_name);
  DS_CHECK_AS(ConfigError, !(c.fp16.enabled && c.fp16.fp16_master_weights_and_grads) || c.zero.stage == 2,
              "[config] 'fp16.fp16_master_weights_and_grads' in {} needs zero_optimization.stage 2, found stage {} "
              "(as in DeepSpeed); set \"stage\": 2 or remove it", source_name, c.zero.stage);

  // fp16 at stage 0 runs DeepSpeed's FP16_Optimizer, whose dynamic scaler has no hysteresis.
  if (c.fp16.enabled && c.fp16.loss_scale == 0 && c.zero.stage == 0 && top.has("fp16")) {
    BlockReader fp16 = top.child("fp16");
    for (const char* key : {"hysteresis", "consecutive_hysteresis"})
      fp16.ignore(key, "no hysteresis at ZeRO stage 0: DeepSpeed's FP16_Optimizer has none");
  }
  ctx.summarise();
  c.warnings = std::move(ctx.warnings);
  for (const auto& w : c.warnings) log_warning("{}", w);
  return c;
}

DeepSpeedConfig load_config_file(const std::string& path, const JobShape& job, const AutoValues* autos) {
  std::error_code ec;
  DS_CHECK_AS(IoError, !std::filesystem::is_directory(path, ec),
              "[config] '{}' is a folder; --config takes a DeepSpeed ds_config.json file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    DS_THROW(IoError, "[config] cannot open DeepSpeed config file '{}': {}; check the path", path,
             std::strerror(errno));
  }
  // At most one byte past the limit is read: enough for parse_config to refuse an oversized file.
  const auto size = std::filesystem::file_size(path, ec);
  std::string text(ec ? kMaxConfigBytes + 1 : std::min<uintmax_t>(size, kMaxConfigBytes) + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  DS_CHECK_AS(IoError, !in.bad(), "[config] failed while reading DeepSpeed config file '{}'", path);
  text.resize(static_cast<size_t>(in.gcount()));
  return parse_config(text, job, path, autos);
}

// ---- summary ----------------------------------------------------------------------------------------------------

std::string DeepSpeedConfig::summary() const {
  std::string s = fmt::format("DeepSpeed config {} (data-parallel world size {}):\n", source, dp_world_size);
  s += fmt::format("  batch: train_batch_size {} = micro batch {} x gradient accumulation {} x dp {}\n",
                   train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps, dp_world_size);
  const OptimizerConfig& o = optimizer;
  const bool lamb = o.type == "lamb";
  s += fmt::format("  optimizer: {}{} ({}) lr {} betas ({}, {}) eps {} weight_decay {} bias_correction {}\n",
                   lamb ? "LAMB" : o.type == "adamw" ? "AdamW" : "Adam",
                   o.from_config ? "" : " [default, no optimizer block]",
                   lamb ? fmt::format("trust ratio per parameter in [{}, {}]", o.min_coeff, o.max_coeff)
                   : o.adam_w_mode ? "decoupled weight decay"
                                   : "L2 weight decay",
                   o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.bias_correction ? "on" : "off");
  const SchedulerConfig& sc = scheduler;
  const char* warm = sc.warmup_type == WarmupType::log ? "log" : "linear";
  switch (sc.type) {
    case SchedulerType::none:
      s += "  scheduler: none (constant learning rate)\n";
      break;
    case SchedulerType::warmup_lr:
      s += fmt::format("  scheduler: WarmupLR {} -> {} over {} steps ({})\n", sc.warmup_min_lr, sc.warmup_max_lr,
                       sc.warmup_num_steps, warm);
      break;
    case SchedulerType::warmup_decay_lr:
      s += fmt::format("  scheduler: WarmupDecayLR {} -> {} over {} steps ({}), linear decay to 0 at step {}\n",
                       sc.warmup_min_lr, sc.warmup_max_lr, sc.warmup_num_steps, warm, sc.total_num_steps);
      break;
    case SchedulerType::warmup_cosine_lr:
      s += fmt::format("  scheduler: WarmupCosineLR ratio {} -> 1 over {} steps ({}), cosine to {} at step {}\n",
                       sc.warmup_min_ratio, sc.warmup_num_steps, warm, sc.cos_min_ratio, sc.total_num_steps);
      break;
    case SchedulerType::one_cycle:
      s += fmt::format("  scheduler: OneCycle lr {} -> {} over {} steps, back over {}{}\n", sc.cycle_min_lr,
                       sc.cycle_max_lr, sc.cycle_first_step_size,
                       sc.cycle_second_step_size.value_or(sc.cycle_first_step_size),
                       sc.cycle_momentum ? fmt::format(", beta1 {} -> {} and back (beta2 0.99)", sc.cycle_max_mom,
                                                       sc.cycle_min_mom)
                                         : "");
      break;
    case SchedulerType::lr_range_test:
      s += fmt::format("  scheduler: LRRangeTest lr {} x (1 + {} per {} steps){}\n", sc.lr_range_test_min_lr,
                       sc.lr_range_test_step_rate, sc.lr_range_test_step_size,
                       sc.lr_range_test_staircase ? ", staircase" : "");
      break;
  }
  std::string precision = fp16.enabled   ? "fp16 mixed (fp32 master weights, loss scaling)"
                          : bf16.enabled ? "bf16 mixed (fp32 master weights)"
                                         : "fp32";
  s += fmt::format("  gradient_clipping {}, steps_per_print {}, ZeRO stage {}, precision {}",
                   gradient_clipping, steps_per_print == 0 ? std::string("never") : std::to_string(steps_per_print),
                   zero.stage, precision);
  if (activation_checkpointing.enabled) s += ", activation checkpointing on";
  if (!warnings.empty()) s += fmt::format("\n  {} warning(s) at load", warnings.size());
  return s;
}

}  // namespace ds::config
