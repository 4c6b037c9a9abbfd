// `dspeed generate`: one completion through the same serving loop as `dspeed serve`, without HTTP. The loop runs
// on this thread (run_until_idle), and its sink writes each piece of final text to stdout as it is produced; a
// one-line summary goes to stderr so stdout holds only the generated text.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <optional>

#include "commands.h"
#include "ds/comm/comm_factory.h"
#include "ds/core/error.h"
#include "ds/engine/comm_tensor_parallel.h"
#include "ds/app/trainer.h"
#include "ds/serve/serving_stack.h"

namespace ds::tool {

namespace {

struct GenerateArgs {
  serve::ServingStackOptions stack;
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  inference::SamplingParams sampling;
  std::optional<uint64_t> seed;
  std::string kv_memory;
  int threads = 0;
  bool tensor_parallel = false;  // split the model over the ranks of the job (dspeed launch -n N)
};

void run_generate(GenerateArgs a) {
  if (!a.kv_memory.empty()) a.stack.kv_memory_bytes = app::parse_byte_size(a.kv_memory);
  if (a.threads > 0) omp_set_num_threads(a.threads);
  a.stack.max_queue = 1;
  // The sink's state outlives the stack: the loop's destructor may still deliver a last event.
  inference::GenerationEvent last;
  std::optional<std::chrono::steady_clock::time_point> first_token;
  // Tensor parallelism: every rank of the job runs this same generation on its share of the model; rank 0 prints.
  std::unique_ptr<comm::Communicator> world;
  std::unique_ptr<engine::CommTensorParallel> group;
  bool lead = true;
  if (a.tensor_parallel) {
    world = comm::make_world_communicator("auto");
    DS_CHECK_AS(ConfigError, a.sampling.temperature == 0.0f || a.seed, "[generate] sampling over {} tensor-parallel "
                "ranks needs the same draws on every rank: give --seed, or --temperature 0", world->size());
    group = std::make_unique<engine::CommTensorParallel>(*world);
    a.stack.tensor_parallel = group.get();
    lead = world->rank() == 0;
  }
  serve::ServingStack stack(a.stack);

  inference::GenerationRequest req;
  if (!a.prompt_ids.empty()) {
    req.prompt = a.prompt_ids;
  } else {
    DS_CHECK_AS(ConfigError, stack.tokenizer(), "[generate] a text --prompt needs a tokenizer; give --tokenizer DIR "
                "or the prompt as --prompt-ids");
    data::BpeTokenizer tok = *stack.tokenizer();
    req.prompt = tok.encode(a.prompt);
  }
  req.sampling = a.sampling;
  req.sampling.seed = a.seed;

  const bool text_out = stack.tokenizer() != nullptr;
  req.sink = [&](const inference::GenerationEvent& ev) {
    if (!first_token && !ev.tokens.empty()) first_token = std::chrono::steady_clock::now();
    if (ev.finish != inference::FinishReason::none) last = ev;
    if (!lead) return;
    if (text_out) {
      std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
    } else {
      for (const int32_t t : ev.tokens) std::fprintf(stdout, "%d ", t);
    }
    std::fflush(stdout);
  };

  const auto t0 = std::chrono::steady_clock::now();
  const inference::SubmitResult sr = stack.loop().submit(std::move(req));
  DS_CHECK_AS(ConfigError, sr.status == inference::SubmitStatus::accepted, "{}", sr.error);
  stack.loop().run_until_idle();
  const auto t1 = std::chrono::steady_clock::now();
  DS_CHECK(last.finish != inference::FinishReason::error, "[generate] generation failed: {}", last.error);
  if (!lead) return;
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const double seconds = std::chrono::duration<double>(t1 - t0).count();
  const double ttft = first_token ? std::chrono::duration<double>(*first_token - t0).count() : 0.0;
  // Decode speed: tokens after the first over the time after it (the first one pays for the prompt).
  const double decode_s = seconds - ttft;
  fmt::print(stderr,
             "generate: prompt {} tokens, generated {} tokens in {:.3f} s ({:.1f} tokens/s; first token after "
             "{:.3f} s, then {:.1f} tokens/s), finish {}\n",
             last.prompt_tokens, last.completion_tokens, seconds,
             seconds > 0 ? last.completion_tokens / seconds : 0.0, ttft,
             decode_s > 0 && last.completion_tokens > 1 ? (last.completion_tokens - 1) / decode_s : 0.0,
             inference::finish_reason_name(last.finish));
}

}  // namespace

void add_generate_command(CLI::App& root) {
  auto a = std::make_shared<GenerateArgs>();
  a->sampling.max_tokens = 64;
  a->sampling.temperature = 0.0f;
  CLI::App* cmd = root.add_subcommand("generate", "Complete one prompt, streaming the text to stdout");
  cmd->add_option("-m,--model", a->stack.model_path,
                  "checkpoint directory (dspeed train --save) or .safetensors file (dspeed ckpt consolidate)")
      ->required();
  cmd->add_option("--arch", a->stack.arch, "model preset or JSON, for files that do not record their shape");
  auto* text = cmd->add_option("-p,--prompt", a->prompt, "the prompt text");
  cmd->add_option("--prompt-ids", a->prompt_ids, "the prompt as token ids, e.g. 464,3290")
      ->delimiter(',')
      ->excludes(text);
  cmd->add_option("--max-tokens", a->sampling.max_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", a->sampling.temperature, "0: greedy")->capture_default_str();
  cmd->add_option("--top-p", a->sampling.top_p, "nucleus sampling threshold")->capture_default_str();
  cmd->add_option("--top-k", a->sampling.top_k, "sample among the k most likely tokens (0: all)")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the sampler (default: drawn)");
  cmd->add_option("--stop", a->sampling.stop, "stop string (repeatable, at most 4)");
  cmd->add_flag("--ignore-eos", a->sampling.ignore_eos, "keep going after the end-of-text token");
  cmd->add_option("--tokenizer", a->stack.tokenizer_dir,
                  "folder with encoder.json and vocab.bpe (\"\": none; prints token ids)")
      ->capture_default_str();
  cmd->add_option("--kv-memory", a->kv_memory, "KV-cache memory, e.g. 64MiB (default 256MiB)");
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)");
  cmd->add_option("--device", a->stack.device, "where the model runs: cpu, cuda or cuda:N (a build with CUDA)")
      ->capture_default_str();
  cmd->add_option("--weights", a->stack.weights,
                  "weight format on the CPU: fp32 (as trained) or bf16 (faster with AVX512_BF16)")
      ->capture_default_str();
  cmd->add_option("--kv-dtype", a->stack.kv_dtype,
                  "KV cache elements on the CPU: fp32, or bf16 (half the memory per token: twice the tokens held)")
      ->capture_default_str();
  cmd->add_flag("--tensor-parallel", a->tensor_parallel,
                "split each layer over the ranks of the job, as DeepSpeed-Inference's AutoTP (run it under dspeed "
                "launch -n N; CPU)");
  cmd->callback([a] {
    DS_CHECK_AS(ConfigError, !a->prompt.empty() || !a->prompt_ids.empty(),
                "[generate] give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
    run_generate(*a);
  });
}

}  // namespace ds::tool
