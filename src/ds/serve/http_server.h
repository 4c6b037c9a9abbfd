// The OpenAI-compatible HTTP front end of a ServingLoop (DESIGN decision 11), event-driven on Boost.Beast/Asio:
//   POST /v1/completions       prompt as text or token ids; sampling, penalties, logit_bias, logprobs, echo, stream
//                              (server-sent events in OpenAI's chunk format, ending with "data: [DONE]"); usage
//   POST /v1/chat/completions  messages through the ChatML template; the same fields, chat's formats
//   GET  /v1/models, GET /v1/models/{id}, GET /health, GET /metrics (Prometheus text)
// No connection holds a thread: a few I/O threads serve every connection, and a stream costs a buffer, not a
// worker, so /health answers at once beside hundreds of open streams or stalled clients. A malformed request gets
// 400 with an OpenAI-style error body; a full queue gets 429 at once, never a wait; a client that goes away
// mid-generation has its request cancelled, so its KV blocks return to the pool before the next pass.
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

struct ChatFormat;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                    // 0: any free port (see HttpServer::port)
  std::string model_name = "dspeed";  // the id /v1/models lists and responses carry
  int io_threads = 2;                 // threads running the event loop; connections are not tied to them
  int parse_threads = 2;              // threads that parse and tokenize request bodies, off the event loop
  int max_connections = 4096;         // beyond this a new connection gets 503 and is closed
  double idle_timeout_s = 60;         // a connection with no request started for this long is closed
  double read_timeout_s = 30;         // a request must arrive whole (headers and body) within this of its first byte
  double write_timeout_s = 30;        // a client that takes nothing of a response for this long is dropped
  double shutdown_timeout_s = 30;     // shutdown(): how long running requests may take to finish
  std::shared_ptr<const ChatFormat> chat;  // how chat messages become a prompt (null: the built-in ChatML)
};

class HttpServer {
 public:
  // The loop must be running (ServingLoop::start) and outlive the server. tokenizer is needed for text prompts
  // and text output; without it only token-id prompts are accepted.
  HttpServer(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and serves on threads of its own; throws IoError naming host:port when the port cannot be bound.
  void start();
  // Graceful: stops accepting, closes idle connections, lets running requests finish until
  // options.shutdown_timeout_s, then ends each remaining one (a stream with the error event "the server is
  // shutting down" and a clean end of the response, a whole request with 503). Returns once every connection is
  // closed. Thread-safe; a second call, or hurry(), moves the deadline to now.
  void shutdown();
  void hurry();  // from another thread during shutdown(): end the remaining requests now
  // shutdown() with no time for running requests.
  void stop();
  int port() const;  // the bound port (after start)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::serve
