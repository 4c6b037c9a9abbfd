// `dspeed serve`: an OpenAI-compatible completions server (POST /v1/completions, GET /v1/models, /health,
// /metrics) over the serving loop. SIGINT and SIGTERM are blocked before any thread exists, so every thread
// inherits the mask and the main thread alone takes them with sigwait. The first starts a graceful shutdown on a
// thread of its own (running requests get --shutdown-timeout seconds to finish, then streams get the shutdown
// event); a second signal during it ends the remaining requests at once. Then the loop stops and the command
// returns normally.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <thread>

#include "commands.h"
#include "ds/core/error.h"
#include "ds/app/trainer.h"
#include "ds/serve/http_server.h"
#include "ds/serve/serving_stack.h"

namespace ds::tool {

namespace {

struct ServeArgs {
  serve::ServingStackOptions stack;
  serve::ServerOptions server;
  std::string kv_memory;
  int threads = 0;
};

void run_serve(ServeArgs a) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  DS_CHECK(pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr) == 0, "[serve] cannot block SIGINT/SIGTERM");
  std::signal(SIGPIPE, SIG_IGN);  // a client that disconnects must cost a failed write, not the process

  if (!a.kv_memory.empty()) a.stack.kv_memory_bytes = app::parse_byte_size(a.kv_memory);
  a.stack.threads = a.threads;  // applied on the loop's thread, where the passes run
  if (a.server.model_name.empty()) a.server.model_name = serve::default_served_name(a.stack.model_path);

  serve::ServingStack stack(a.stack);
  a.server.chat = std::make_shared<const serve::ChatFormat>(stack.chat_format());
  stack.loop().start();
  serve::HttpServer server(stack.loop(), stack.tokenizer(), a.server);
  server.start();
  fmt::print("serving '{}' ({}) at http://{}:{}/v1 -- {}\n", a.server.model_name, a.stack.model_path,
             a.server.host, server.port(), stack.describe());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  fmt::print(stderr, "serve: {} received, stopping: running requests have {} s to finish (a second signal ends "
             "them now)\n", sig == SIGINT ? "SIGINT" : "SIGTERM", a.server.shutdown_timeout_s);
  std::atomic<bool> drained{false};
  std::thread drain([&] {
    server.shutdown();
    drained = true;
  });
  const timespec slice{0, 100'000'000};
  while (!drained) {
    if (sigtimedwait(&stop_signals, nullptr, &slice) > 0) {
      fmt::print(stderr, "serve: second signal, ending the running requests now\n");
      server.hurry();
    }
  }
  drain.join();
  stack.loop().stop();
  const inference::LoopStats s = stack.loop().stats();
  fmt::print(stderr, "serve: {} requests finished, {} cancelled, {} tokens generated in {} passes\n",
             s.requests_finished, s.requests_cancelled, s.completion_tokens, s.passes);
}

}  // namespace

void add_serve_command(CLI::App& root) {
  auto a = std::make_shared<ServeArgs>();
  a->server.model_name.clear();  // default: from the model path
  CLI::App* cmd = root.add_subcommand(
      "serve", "Serve a model over HTTP with OpenAI's completions API (streaming, continuous batching)");
  cmd->add_option("-m,--model", a->stack.model_path,
                  "checkpoint directory (dspeed train --save) or .safetensors file (dspeed ckpt consolidate)")
      ->required();
  cmd->add_option("--arch", a->stack.arch, "model preset or JSON, for files that do not record their shape");
  cmd->add_option("--served-model-name", a->server.model_name,
                  "the model id clients send and /v1/models lists (default: the model file's name)");
  cmd->add_option("--host", a->server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->server.port, "port to listen on (0: any free port)")->capture_default_str();
  cmd->add_option("--policy", a->stack.policy, "scheduling: splitfuse, prefill-first or static")
      ->capture_default_str();
  cmd->add_option("--token-budget", a->stack.token_budget, "tokens per forward pass")->capture_default_str();
  cmd->add_option("--max-sequences", a->stack.max_sequences, "sequences per forward pass")->capture_default_str();
  cmd->add_option("--static-batch", a->stack.static_batch_size, "requests per batch of the static policy")
      ->capture_default_str();
  cmd->add_option("--kv-block-size", a->stack.kv_block_size, "tokens per KV-cache block")->capture_default_str();
  auto* blocks = cmd->add_option("--kv-blocks", a->stack.kv_block_count, "KV-cache blocks (default: from --kv-memory)");
  cmd->add_option("--kv-memory", a->kv_memory, "KV-cache memory, e.g. 256MiB (default 256MiB)")->excludes(blocks);
  cmd->add_option("--max-queue", a->stack.max_queue, "requests queued or running before new ones get 429")
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads for the model (default: all cores)");
  cmd->add_option("--device", a->stack.device, "where the model runs: cpu, cuda or cuda:N (a build with CUDA)")
      ->capture_default_str();
  cmd->add_option("--weights", a->stack.weights,
                  "weight format on the CPU: fp32 (as trained) or bf16 (faster with AVX512_BF16)")
      ->capture_default_str();
  cmd->add_option("--kv-dtype", a->stack.kv_dtype,
                  "KV cache elements on the CPU: fp32, or bf16 (half the memory per token: twice the tokens held)")
      ->capture_default_str();
  cmd->add_option("--http-threads", a->server.io_threads,
                  "threads running the HTTP event loop (connections are not tied to threads)")
      ->capture_default_str();
  cmd->add_option("--max-connections", a->server.max_connections,
                  "HTTP connections open at once; more get 503 and are closed")
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout", a->server.shutdown_timeout_s,
                  "seconds running requests get to finish after SIGTERM/SIGINT before they are ended")
      ->capture_default_str();
  cmd->add_option("--read-timeout", a->server.read_timeout_s,
                  "seconds a request may take to arrive whole (headers and body) once it has begun")
      ->capture_default_str();
  cmd->add_option("--idle-timeout", a->server.idle_timeout_s,
                  "seconds a connection may wait for its next request before it is closed")
      ->capture_default_str();
  cmd->add_option("--tokenizer", a->stack.tokenizer_dir,
                  "folder with encoder.json and vocab.bpe (\"\": none; prompts must then be token ids)")
      ->capture_default_str();
  cmd->add_option("--chat-template", a->stack.chat_template,
                  "Jinja chat template for /v1/chat/completions (default: the tokenizer folder's "
                  "tokenizer_config.json chat_template, else ChatML)");
  cmd->add_option("--seed", a->stack.seed, "base seed for requests that give none (default: drawn at start)");
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace ds::tool
