// Builds the serving stack in dependency order (model, tokenizer, engine, scheduler, loop) and checks the options
// that only make sense together before anything large is allocated.
#include "ds/serve/serving_stack.h"

#include <fmt/core.h>

#include <algorithm>
#include <filesystem>

#include "ds/core/error.h"
#include "ds/inference/model_runner.h"
#include "ds/inference/scheduler.h"

namespace ds::serve {

inference::EngineConfig ServingStack::engine_config(const ServingStackOptions& o, int32_t context) {
  const int32_t pass_tokens = std::max(o.token_budget, context);
  inference::EngineConfig ec;
  ec.kv_block_size = o.kv_block_size;
  ec.kv_block_count = o.kv_block_count;
  ec.kv_memory_bytes = o.kv_memory_bytes;
  ec.max_ragged_batch_size = pass_tokens;
  ec.max_ragged_sequence_count = std::min(o.max_sequences, pass_tokens);
  ec.max_tracked_sequences = std::max(ec.max_tracked_sequences, ec.max_ragged_sequence_count);
  ec.device = inference::parse_device(o.device);
  ec.kv_dtype = inference::parse_kv_dtype(o.kv_dtype);
  return ec;
}

inference::SchedulerLimits ServingStack::scheduler_limits(const ServingStackOptions& o) {
  inference::SchedulerLimits limits;
  limits.token_budget = o.token_budget;
  limits.max_sequences = std::min(o.max_sequences, o.token_budget);
  limits.static_batch_size = o.static_batch_size;
  return limits;
}

ServingStack::ServingStack(const ServingStackOptions& o, std::shared_ptr<const inference::InferenceModel> model)
    : options_(o) {
  DS_CHECK_AS(ConfigError, o.token_budget > 0, "[serve] --token-budget must be at least 1, got {}", o.token_budget);
  DS_CHECK_AS(ConfigError, o.max_sequences > 0, "[serve] --max-sequences must be at least 1, got {}",
              o.max_sequences);
  DS_CHECK_AS(ConfigError, o.max_queue > 0, "[serve] --max-queue must be at least 1, got {}", o.max_queue);
  const inference::Policy policy = inference::parse_policy(o.policy);
  const Device device = inference::parse_device(o.device);  // fails before the model is loaded
  const inference::WeightFormat weights = model ? model->weight_format() : inference::parse_weight_format(o.weights);
  inference::check_weights_on_device(weights, device);
  inference::check_kv_dtype_on_device(inference::parse_kv_dtype(o.kv_dtype), device);

  model_ = model ? std::move(model)
                 : inference::InferenceModel::load(o.model_path, o.arch, weights, device, o.tensor_parallel);
  if (!o.tokenizer_dir.empty()) {
    tokenizer_ = std::make_unique<data::BpeTokenizer>(data::BpeTokenizer::from_directory(o.tokenizer_dir));
    DS_CHECK_AS(ConfigError, tokenizer_->vocab_size() <= model_->config().vocab_size,
                "[serve] the tokenizer in '{}' has {} tokens but the model's vocabulary has only {}; give the "
                "tokenizer the model was trained with (--tokenizer)",
                o.tokenizer_dir, tokenizer_->vocab_size(), model_->config().vocab_size);
  }

  chat_ = load_chat_format(o.tokenizer_dir, o.chat_template);

  engine_ = std::make_unique<inference::InferenceEngine>(model_, engine_config(o, model_->config().block_size));

  inference::LoopOptions lo;
  lo.max_pending = o.max_queue;
  lo.seed = o.seed;
  lo.threads = o.threads;
  loop_ = std::make_unique<inference::ServingLoop>(*engine_, inference::make_scheduler(policy, scheduler_limits(o)),
                                                   tokenizer_.get(), lo);
}

ServingStack::~ServingStack() = default;

std::string ServingStack::describe() const {
  const nn::Gpt2Config& c = model_->config();
  const auto& kv = engine_->kv_state();
  return fmt::format("GPT-2 L{} H{} C{} V{} context {} on {}, {} weights; policy {}, {} tokens per pass; KV cache "
                     "{} blocks of {} tokens, {}; queue {}; chat template {}",
                     c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size, engine_->device_description(),
                     inference::weight_format_name(model_->weight_format()),
                     inference::policy_name(loop_->policy()), options_.token_budget, kv.kv_block_count(),
                     kv.kv_block_size(), inference::kv_dtype_name(engine_->config().kv_dtype), options_.max_queue,
                     chat_.origin);
}

std::string default_served_name(const std::string& model_path) {
  std::filesystem::path p(model_path);
  if (!p.has_filename()) p = p.parent_path();  // "runs/ckpt/"
  if (std::filesystem::is_directory(p)) return p.filename().string();
  return p.stem().string();
}

}  // namespace ds::serve
