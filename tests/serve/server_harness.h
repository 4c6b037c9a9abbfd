// The HTTP server's test harness: a small randomly initialised GPT-2 (L2 H2 C64, vocab 50257, context 128) with
// the GPT-2 tokenizer behind an HttpServer on 127.0.0.1 (port 0), and the clients the tests use (httplib, so the
// client side is independent of the server's HTTP code).
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ds/data/bpe_tokenizer.h"
#include "ds/inference/engine.h"
#include "ds/inference/model_runner.h"
#include "ds/inference/scheduler.h"
#include "ds/inference/serving_loop.h"
#include "ds/nn/models/gpt2.h"
#include "ds/serve/http_server.h"

namespace ds::serve::harness {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline const std::string kSourceDir = DS_SOURCE_DIR;
inline const std::string kModelName = "tiny";

// The server's tokenizer (it copies it per worker) and a separate one for the test thread's own counts.
inline const data::BpeTokenizer& server_tokenizer() {
  static const data::BpeTokenizer tok = data::BpeTokenizer::from_directory(kSourceDir + "/data/tokenizer/gpt2");
  return tok;
}
inline data::BpeTokenizer& test_tokenizer() {
  static data::BpeTokenizer tok = data::BpeTokenizer::from_directory(kSourceDir + "/data/tokenizer/gpt2");
  return tok;
}

inline nn::Gpt2& tiny_model() {
  static std::unique_ptr<nn::Gpt2> model = [] {
    nn::Gpt2Config cfg;
    cfg.name = "custom";
    cfg.n_layer = 2;
    cfg.n_head = 2;
    cfg.n_embd = 64;
    cfg.vocab_size = 50257;
    cfg.block_size = 128;
    auto m = std::make_unique<nn::Gpt2>(cfg, 1, /*with_grads=*/false);
    m->init_weights(2024);
    return m;
  }();
  return *model;
}

inline inference::EngineConfig engine_config(int32_t kv_blocks = 96) {
  inference::EngineConfig c;
  c.kv_block_size = 16;
  c.kv_block_count = kv_blocks;
  c.max_tracked_sequences = 64;
  c.max_ragged_batch_size = 256;
  c.max_ragged_sequence_count = 64;
  return c;
}

// Model, engine, loop and server; destroyed in reverse (server first, then the loop).
struct Harness {
  explicit Harness(int32_t max_pending = 256, bool start_loop = true,
                   const data::BpeTokenizer* tokenizer = &server_tokenizer(), ServerOptions server_options = options(),
                   int32_t kv_blocks = 96)
      : kv_blocks(kv_blocks),
        engine(std::make_shared<inference::InferenceModel>(tiny_model()), engine_config(kv_blocks)),
        loop(engine,
             inference::make_scheduler(inference::Policy::splitfuse, inference::SchedulerLimits{256, 64, 16}),
             tokenizer, inference::LoopOptions{max_pending, 7}),
        server(loop, tokenizer, std::move(server_options)) {
    if (start_loop) loop.start();
    server.start();
    port = server.port();
  }
  static ServerOptions options() {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.model_name = kModelName;
    return o;
  }
  httplib::Client client() const {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(60, 0);
    return cli;
  }

  int32_t kv_blocks;
  inference::InferenceEngine engine;
  inference::ServingLoop loop;
  HttpServer server;
  int port = 0;
};

struct Reply {
  int status = 0;
  json body;
  httplib::Headers headers;
};

inline Reply post(const Harness& h, const json& body) {
  httplib::Client cli = h.client();
  const httplib::Result res = cli.Post("/v1/completions", body.dump(), "application/json");
  if (!res) {
    ADD_FAILURE() << "POST failed: " << httplib::to_string(res.error());
    return {};
  }
  Reply r{res->status, json(), res->headers};
  r.body = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(r.body.is_discarded()) << "not JSON: " << res->body;
  return r;
}

inline Reply post_raw(const Harness& h, const std::string& method, const std::string& path, const std::string& body) {
  httplib::Client cli = h.client();
  httplib::Request req;
  req.method = method;
  req.path = path;
  req.body = body;
  if (!body.empty()) req.set_header("Content-Type", "application/json");
  const httplib::Result res = cli.send(req);
  if (!res) {
    ADD_FAILURE() << method << " " << path << " failed: " << httplib::to_string(res.error());
    return {};
  }
  return {res->status, json::parse(res->body, nullptr, false), res->headers};
}

struct Streamed {
  int status = 0;
  std::vector<json> chunks;  // every data event but [DONE], in order
  bool done_last = false;    // "data: [DONE]" was the last event
  std::string text;          // concatenated choices[0].text
  std::vector<int32_t> token_ids;
  std::string finish_reason;
  json usage;
};

// Sends a streaming request; stop_after_first: the receiver returns false after the first event (the client
// goes away mid-stream).
inline Streamed post_stream(const Harness& h, const json& body, bool stop_after_first = false,
                     std::atomic<bool>* first_seen = nullptr) {
  httplib::Client cli = h.client();
  Streamed out;
  std::string buffer;
  std::vector<std::string> events;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buffer.append(data, len);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      events.push_back(buffer.substr(0, end));
      buffer.erase(0, end + 2);
    }
    if (!events.empty() && first_seen) *first_seen = true;
    return !(stop_after_first && !events.empty());
  };
  const httplib::Result res = cli.send(req);
  if (stop_after_first) return out;
  if (!res) {
    ADD_FAILURE() << "stream failed: " << httplib::to_string(res.error());
    return out;
  }
  out.status = res->status;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_TRUE(buffer.empty()) << "a partial event at the end: " << buffer;
  for (size_t i = 0; i < events.size(); ++i) {
    const std::string& e = events[i];
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    if (e == "data: [DONE]") {
      out.done_last = i + 1 == events.size();
      continue;
    }
    json j = json::parse(e.substr(6));
    if (j.contains("usage") && !j["usage"].is_null()) out.usage = j["usage"];
    if (!j["choices"].empty()) {
      const json& c = j["choices"][0];
      out.text += c["text"].get<std::string>();
      if (c.contains("token_ids")) {
        for (const auto& t : c["token_ids"]) out.token_ids.push_back(t.get<int32_t>());
      }
      if (!c["finish_reason"].is_null()) out.finish_reason = c["finish_reason"].get<std::string>();
    }
    out.chunks.push_back(std::move(j));
  }
  return out;
}

inline std::map<std::string, double> metrics(const Harness& h) {
  httplib::Client cli = h.client();
  const httplib::Result res = cli.Get("/metrics");
  std::map<std::string, double> m;
  if (!res || res->status != 200) {
    ADD_FAILURE() << "GET /metrics failed";
    return m;
  }
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  std::istringstream in(res->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return m;
}

// Waits (up to 10 s) for the loop to drain, then checks /metrics says so.
inline void expect_idle(const Harness& h) {
  std::map<std::string, double> m;
  for (auto deadline = Clock::now() + 10s; Clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
    m = metrics(h);
    if (m["dspeed_kv_blocks_used"] == 0 && m["dspeed_running_sequences"] == 0 && m["dspeed_queue_depth"] == 0) break;
  }
  EXPECT_EQ(m["dspeed_kv_blocks_used"], 0);
  EXPECT_EQ(m["dspeed_running_sequences"], 0);
  EXPECT_EQ(m["dspeed_queue_depth"], 0);
  EXPECT_EQ(m["dspeed_kv_blocks_free"], h.kv_blocks);
}

template <typename Pred>
inline bool wait_for(Pred pred, std::chrono::milliseconds limit = 10s) {
  for (auto deadline = Clock::now() + limit; Clock::now() < deadline; std::this_thread::sleep_for(2ms)) {
    if (pred()) return true;
  }
  return pred();
}

inline json greedy(const std::string& prompt, int max_tokens) {
  return {{"model", kModelName}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0},
          {"ignore_eos", true}};
}

inline const std::vector<std::string> kPrompts = {"The quick brown fox", "Once upon a time, in a land far away,",
                                           "import numpy as np\n", "Q: What is 2+2?\nA:"};

}  // namespace ds::serve::harness
