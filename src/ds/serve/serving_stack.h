// Everything `dspeed serve` and `dspeed generate` build before the first request: the model from a checkpoint or
// safetensors file, the tokenizer, the engine with its KV cache, a scheduling policy and the serving loop, from
// one options struct. The engine's per-pass token cap is max(token budget, model context): the policies enforce
// the budget themselves, and prefill-first/static must be able to run one whole prompt longer than it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ds/data/bpe_tokenizer.h"
#include "ds/inference/engine.h"
#include "ds/inference/serving_loop.h"
#include "ds/serve/chat_template.h"

namespace ds::serve {

struct ServingStackOptions {
  std::string model_path;                    // checkpoint directory or .safetensors file
  std::string arch;                          // preset or model JSON overriding the file's shape
  std::string tokenizer_dir = "data/tokenizer/gpt2";  // empty: no tokenizer (token ids in and out only)
  std::string policy = "splitfuse";          // splitfuse, prefill-first, static
  int32_t token_budget = 256;                // tokens per forward pass
  int32_t max_sequences = 512;               // sequences per forward pass (capped at the token budget)
  int32_t static_batch_size = 16;            // requests per batch of the static policy
  int32_t kv_block_size = 16;
  int32_t kv_block_count = 0;                // 0: as many as kv_memory_bytes holds
  int64_t kv_memory_bytes = int64_t(256) << 20;
  int32_t max_queue = 256;                   // requests queued or running; more get 429
  std::optional<uint64_t> seed;              // base of the seeds of requests that give none (default: drawn)
  int threads = 0;                           // model threads of the loop's passes (0: all cores)
  std::string device = "cpu";                // where the model runs: cpu, cuda or cuda:N
  std::string weights = "fp32";              // weight format on the CPU: fp32 or bf16
  std::string kv_dtype = "fp32";             // KV cache elements on the CPU: fp32 or bf16
  // The chat template: a Jinja file; empty: the tokenizer folder's tokenizer_config.json "chat_template" when it
  // has one, else the built-in ChatML.
  std::string chat_template;
  // Tensor parallelism (CPU): this rank's group; every rank of it runs the same stack on the same requests and
  // holds its share of each layer (inference/model_runner.h). Null: one rank.
  nn::TensorParallelGroup* tensor_parallel = nullptr;
};


class ServingStack {
 public:
  // Throws IoError/ConfigError naming the file or option at fault. With `model`, that model is served (shared,
  // read-only) and options.model_path is not read: a benchmark builds one stack per policy over one loaded model.
  explicit ServingStack(const ServingStackOptions& options,
                        std::shared_ptr<const inference::InferenceModel> model = nullptr);
  ~ServingStack();
  ServingStack(const ServingStack&) = delete;
  ServingStack& operator=(const ServingStack&) = delete;

  inference::ServingLoop& loop() { return *loop_; }
  const inference::InferenceEngine& engine() const { return *engine_; }
  const data::BpeTokenizer* tokenizer() const { return tokenizer_.get(); }
  const inference::InferenceModel& model() const { return *model_; }
  const ChatFormat& chat_format() const { return chat_; }
  // One line: the model's shape, the policy and the KV cache, for the command's banner.
  std::string describe() const;
  // The engine these options give for a model with this context.
  static inference::EngineConfig engine_config(const ServingStackOptions& options, int32_t context);
  // The scheduler's limits these options give (inference::make_scheduler checks them).
  static inference::SchedulerLimits scheduler_limits(const ServingStackOptions& options);

 private:
  ServingStackOptions options_;
  std::shared_ptr<const inference::InferenceModel> model_;
  std::unique_ptr<data::BpeTokenizer> tokenizer_;
  std::unique_ptr<inference::InferenceEngine> engine_;
  std::unique_ptr<inference::ServingLoop> loop_;
  ChatFormat chat_;
};

// The name a model file is served under by default: its file name without extension, or its directory's name.
std::string default_served_name(const std::string& model_path);

}  // namespace ds::serve
