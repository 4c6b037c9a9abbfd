// Single-stream decode, ours and PyTorch's: the same prompt ids are handed to bench/torch_decode.py, a checkpoint
// directory is consolidated to a temporary safetensors file for it, and the generated ids are compared.
#include "bench/decode_bench.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ds/core/child_process.h"
#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/core/strings.h"
#include "ds/inference/engine.h"
#include "ds/ckpt/checkpoint_format.h"

namespace ds::inference {
namespace {

using Clock = std::chrono::steady_clock;

struct Run {
  double prefill_s = 0, decode_s = 0;
  std::vector<int32_t> tokens;
};

Run decode_once(InferenceEngine& engine, const std::vector<int32_t>& prompt, int new_tokens) {
  const auto V = static_cast<size_t>(engine.vocab_size());
  const uint64_t uid[] = {1};
  Run r;
  auto t0 = Clock::now();
  std::span<const int32_t> toks[] = {prompt};
  std::span<const float> logits = engine.put(uid, toks);
  r.tokens.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin()));
  r.prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  for (int i = 1; i < new_tokens; ++i) {
    toks[0] = std::span<const int32_t>(&r.tokens.back(), 1);
    logits = engine.put(uid, toks);
    r.tokens.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin()));
  }
  r.decode_s = std::chrono::duration<double>(Clock::now() - t0).count();
  engine.flush(1);
  return r;
}

}  // namespace

DecodeBenchResult run_decode_bench(const DecodeBenchOptions& o) {
  DS_CHECK_AS(ConfigError, !o.model.empty(), "[bench] give --model (a checkpoint directory or a safetensors file)");
  DS_CHECK_AS(ConfigError, o.prompt_tokens > 0 && o.new_tokens > 1 && o.repeats > 0, "[bench] need prompt tokens > "
              "0, new tokens > 1 and repeats > 0");
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const WeightFormat weights = parse_weight_format(o.weights);
  const Device device = parse_device(o.device);
  check_weights_on_device(weights, device);
  const auto model = InferenceModel::load(o.model, o.arch, weights, device);
  const nn::Gpt2Config& mc = model->config();
  DS_CHECK_AS(ConfigError, o.prompt_tokens + o.new_tokens <= mc.block_size, "[bench] {} prompt + {} new tokens exceed "
              "the model's context of {}", o.prompt_tokens, o.new_tokens, mc.block_size);
  EngineConfig ec;
  ec.kv_block_size = 16;
  ec.kv_block_count = (mc.block_size + 15) / 16;
  ec.max_ragged_batch_size = std::max(ec.max_ragged_batch_size, mc.block_size);  // the whole prompt in one pass
  ec.device = device;
  DS_CHECK_AS(ConfigError, o.device == "cpu" || o.device == "cuda", "[bench] bench decode runs ours and PyTorch's "
              "on the same device: give --device cpu or cuda (the first GPU), not '{}'", o.device);
  InferenceEngine engine(model, ec);
  Rng rng(o.seed);
  std::vector<int32_t> prompt;
  for (int i = 0; i < o.prompt_tokens; ++i)
    prompt.push_back(static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(mc.vocab_size)));

  std::vector<double> decode, prefill;
  std::vector<int32_t> ours_tokens;
  auto measure = [&] {
    decode_once(engine, prompt, o.new_tokens);  // warm-up
    for (int r = 0; r < o.repeats; ++r) {
      const Run run = decode_once(engine, prompt, o.new_tokens);
      decode.push_back((o.new_tokens - 1) / run.decode_s);
      prefill.push_back(o.prompt_tokens / run.prefill_s);
      ours_tokens = run.tokens;
    }
  };
  measure();

  DecodeBenchResult res;
  nlohmann::json torch;
  if (!o.skip_torch) {
    // PyTorch reads a safetensors file: a checkpoint directory is consolidated to a temporary one first.
    std::string file = o.model;
    std::string tmp;
    if (std::filesystem::is_directory(o.model)) {
      tmp = (std::filesystem::temp_directory_path() / fmt::format("dspeed-decode-{}.safetensors", getpid())).string();
      ckpt::consolidate_checkpoint(ckpt::CheckpointReader(o.model), tmp, "fp32");
      file = tmp;
    }
    std::string ids;
    for (const int32_t t : prompt) {
      if (!ids.empty()) ids += ',';
      ids += std::to_string(t);
    }
    const std::string cmd = fmt::format("{} {} --model {} --prompt-ids {} --new-tokens {} --repeats {} --threads {} "
                                        "--n-head {} --device {}", shell_quote(o.python), shell_quote(o.torch_script),
                                        shell_quote(file), ids, o.new_tokens, o.repeats, o.threads, mc.n_head,
                                        ec.device.is_cpu() ? "cpu" : "cuda");
    try {
      torch = run_child_result(cmd);
    } catch (...) {
      if (!tmp.empty()) std::filesystem::remove(tmp);
      throw;
    }
    if (!tmp.empty()) std::filesystem::remove(tmp);
    measure();  // ours again, after PyTorch
    res.torch_decode_tokens_per_s = torch.at("decode_tokens_per_s").get<double>();
    res.torch_prefill_tokens_per_s = torch.at("prefill_tokens_per_s").get<double>();
    const auto theirs = torch.at("tokens").get<std::vector<int32_t>>();
    res.tokens_agree = theirs == ours_tokens;
    while (res.agreeing_prefix < std::min(theirs.size(), ours_tokens.size()) &&
           theirs[res.agreeing_prefix] == ours_tokens[res.agreeing_prefix])
      ++res.agreeing_prefix;
  }
  res.ours_decode_tokens_per_s = median(decode);
  res.ours_prefill_tokens_per_s = median(prefill);

  fmt::print("model {}\nprompt {} tokens, {} new tokens, greedy, on {} with {} weights, {} thread(s), median of {} "
             "repeats\n", mc.str(), o.prompt_tokens, o.new_tokens, engine.device_description(),
             weight_format_name(model->weight_format()), o.threads, decode.size());
  fmt::print("{:<12} {:>16} {:>17}\n", "", "decode tokens/s", "prefill tokens/s");
  fmt::print("{:<12} {:>16.1f} {:>17.0f}\n", "dspeed", res.ours_decode_tokens_per_s, res.ours_prefill_tokens_per_s);
  if (!o.skip_torch) {
    fmt::print("{:<12} {:>16.1f} {:>17.0f}\n", "pytorch", res.torch_decode_tokens_per_s,
               res.torch_prefill_tokens_per_s);
    fmt::print("ratio        {:>16.2f}x {:>16.2f}x\ngenerated tokens {}\n",
               res.ours_decode_tokens_per_s / res.torch_decode_tokens_per_s,
               res.ours_prefill_tokens_per_s / res.torch_prefill_tokens_per_s,
               res.tokens_agree ? std::string("identical")
               : model->weight_format() == WeightFormat::bf16
                   ? fmt::format("the first {} of {} identical (our bf16 weights against PyTorch's fp32)",
                                 res.agreeing_prefix, ours_tokens.size())
                   : std::string("DIFFER (see the engine tests)"));
  }
  return res;
}

}  // namespace ds::inference
