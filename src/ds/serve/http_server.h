// The OpenAI-compatible HTTP front end of a ServingLoop (DESIGN decision 11), on cpp-httplib:
//   POST /v1/completions  prompt as text or token ids; max_tokens, temperature, top_p, top_k, stop, seed, stream
//                         (server-sent events in OpenAI's chunk format, ending with "data: [DONE]"); usage counts
//   GET  /v1/models, GET /health, GET /metrics (Prometheus text)
// A malformed request gets 400 with an OpenAI-style error body; a full queue gets 429 at once, never a wait; a
// client that goes away mid-generation has its request cancelled, so its sequence is flushed and its KV blocks
// return to the pool before the next pass.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace ds::data {
class BpeTokenizer;
}
namespace ds::inference {
class ServingLoop;
}

namespace ds::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;            // 0: any free port (see HttpServer::port)
  std::string model_name = "dspeed";  // the id /v1/models lists and responses carry
  int http_threads = 64;      // connections served at once (streams hold one each)
};

class HttpServer {
 public:
  // The loop must be running (ServingLoop::start) and outlive the server. tokenizer is needed for text prompts
  // and text output; without it only token-id prompts are accepted.
  HttpServer(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options);
  ~HttpServer();  // stops
  // Binds and serves on a thread of its own; throws IoError naming host:port when the port cannot be bound.
  void start();
  void stop();
  int port() const;  // the bound port (after start)
  // Blocks until stop() (dspeed serve).
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::serve
