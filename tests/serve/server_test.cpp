// The HTTP server end to end on 127.0.0.1 (port 0) with a small randomly initialised GPT-2 (L2 H2 C64, vocab
// 50257, context 128) and the GPT-2 tokenizer. References are independent of the code under test: greedy output
// of a request sent alone, counts from the test's own tokenizer, the number of bad requests the test sent.
// Tests that need a request to stay in flight do not start the loop's thread but step it themselves, so that
// "still queued" or "still generating" is a fact, not a race against a fast model. Every test ends by checking
// that /metrics shows no KV block in use and nothing queued or running.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <latch>
#include <set>

#include "common/full_recompute.h"
#include "serve/server_harness.h"

namespace ds::serve {
namespace {

using namespace harness;

TEST(Server, ConcurrentStreamingAndWholeRequestsAgreeWithSingleRuns) {
  Harness h;
  constexpr int kMax = 12;
  // The reference: each prompt sent alone, nothing else running.
  std::vector<std::string> reference;
  for (const std::string& p : kPrompts) {
    const Reply r = post(h, greedy(p, kMax));
    ASSERT_EQ(r.status, 200) << r.body.dump();
    reference.push_back(r.body["choices"][0]["text"].get<std::string>());
  }

  // 8 clients at once: each prompt once whole and once streamed.
  constexpr int kClients = 8;
  std::vector<Reply> whole(kClients);
  std::vector<Streamed> streamed(kClients);
  std::latch go(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      json body = greedy(kPrompts[i % 4], kMax);
      go.arrive_and_wait();
      if (i >= 4) {
        body["stream"] = true;
        body["stream_options"] = {{"include_usage", true}};
        streamed[i] = post_stream(h, body);
      } else {
        whole[i] = post(h, body);
      }
    });
  }
  for (auto& t : threads) t.join();

  std::set<std::string> ids;
  for (int i = 0; i < kClients; ++i) {
    SCOPED_TRACE("client " + std::to_string(i));
    const std::string& prompt = kPrompts[i % 4];
    const auto prompt_tokens = static_cast<int>(test_tokenizer().encode(prompt).size());
    if (i < 4) {
      const Reply& r = whole[i];
      ASSERT_EQ(r.status, 200) << r.body.dump();
      EXPECT_EQ(r.body["object"], "text_completion");
      EXPECT_EQ(r.body["model"], kModelName);
      EXPECT_EQ(r.body["choices"][0]["text"], reference[i % 4]);
      EXPECT_EQ(r.body["choices"][0]["finish_reason"], "length");
      EXPECT_FALSE(r.body["choices"][0].contains("token_ids"));  // only for token-id prompts
      EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt_tokens);
      EXPECT_EQ(r.body["usage"]["completion_tokens"], kMax);
      EXPECT_EQ(r.body["usage"]["total_tokens"], prompt_tokens + kMax);
      ids.insert(r.body["id"].get<std::string>());
    } else {
      const Streamed& s = streamed[i];
      ASSERT_EQ(s.status, 200);
      EXPECT_TRUE(s.done_last);
      EXPECT_EQ(s.text, reference[i % 4]);
      EXPECT_EQ(s.finish_reason, "length");
      EXPECT_EQ(s.usage["prompt_tokens"], prompt_tokens);
      EXPECT_EQ(s.usage["completion_tokens"], kMax);
      EXPECT_EQ(s.usage["total_tokens"], prompt_tokens + kMax);
      ASSERT_GE(s.chunks.size(), 2u);
      // One id for all chunks of a stream; finish_reason only on the last text chunk; usage last.
      for (size_t c = 0; c < s.chunks.size(); ++c) {
        EXPECT_EQ(s.chunks[c]["id"], s.chunks[0]["id"]);
        EXPECT_TRUE(s.chunks[c].contains("usage"));
        if (c + 2 < s.chunks.size()) { EXPECT_TRUE(s.chunks[c]["choices"][0]["finish_reason"].is_null()); }
      }
      EXPECT_TRUE(s.chunks.back()["choices"].empty());
      ids.insert(s.chunks[0]["id"].get<std::string>());
    }
  }
  EXPECT_EQ(ids.size(), size_t(kClients)) << "completion ids must differ";
  // After the loop is idle: it adds a pass's token count to its stats only after the pass's sinks have run.
  expect_idle(h);
  const auto m = metrics(h);
  EXPECT_EQ(m.at("dspeed_requests_total"), kClients + 4);
  EXPECT_EQ(m.at("dspeed_requests_finished_total"), kClients + 4);
  EXPECT_EQ(m.at("dspeed_generation_tokens_total"), (kClients + 4) * kMax);
  EXPECT_EQ(m.at("dspeed_time_to_first_token_seconds_count"), kClients + 4);
}

TEST(Server, TokenIdPromptsGetTokenIdsBack) {
  Harness h;
  const std::vector<int32_t> prompt = test_tokenizer().encode(kPrompts[0]);
  const Reply by_text = post(h, greedy(kPrompts[0], 10));
  json body = greedy("", 10);
  body["prompt"] = prompt;
  const Reply by_ids = post(h, body);
  ASSERT_EQ(by_ids.status, 200) << by_ids.body.dump();
  const json& c = by_ids.body["choices"][0];
  EXPECT_EQ(c["text"], by_text.body["choices"][0]["text"]);  // same tokens in, same greedy tokens out
  ASSERT_TRUE(c.contains("token_ids"));
  EXPECT_EQ(c["token_ids"].size(), 10u);
  EXPECT_EQ(by_ids.body["usage"]["prompt_tokens"], prompt.size());
  // And they are the model's greedy tokens, by the training model's full forward recomputed for every token.
  EXPECT_EQ(c["token_ids"].get<std::vector<int32_t>>(), ds::testing::full_recompute_greedy(tiny_model(), prompt, 10));

  body["stream"] = true;
  const Streamed s = post_stream(h, body);
  EXPECT_EQ(s.token_ids, c["token_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(s.text, c["text"].get<std::string>());
  expect_idle(h);
}

TEST(Server, WithoutATokenizerOnlyTokenIdsWork) {
  Harness h(256, true, /*tokenizer=*/nullptr);
  const Reply text = post(h, greedy(kPrompts[0], 4));
  EXPECT_EQ(text.status, 400);
  EXPECT_EQ(text.body["error"]["param"], "prompt");
  json body = greedy("", 6);
  body["prompt"] = test_tokenizer().encode(kPrompts[0]);
  body["stop"] = "x";
  const Reply stop = post(h, body);
  EXPECT_EQ(stop.status, 400);
  EXPECT_EQ(stop.body["error"]["param"], "stop");
  body.erase("stop");
  const Reply ids = post(h, body);
  ASSERT_EQ(ids.status, 200) << ids.body.dump();
  EXPECT_EQ(ids.body["choices"][0]["text"], "");
  EXPECT_EQ(ids.body["choices"][0]["token_ids"].size(), 6u);
  // The same token ids as a server with a tokenizer generates for this prompt (greedy, same weights).
  Harness with_tok;
  const Reply ref = post(with_tok, body);
  EXPECT_EQ(ids.body["choices"][0]["token_ids"], ref.body["choices"][0]["token_ids"]);
  expect_idle(h);
  expect_idle(with_tok);
}

TEST(Server, BadRequestsGetOpenAiErrorBodies) {
  Harness h;
  auto expect_error = [](const Reply& r, int status, const json& param, const std::string& part) {
    EXPECT_EQ(r.status, status) << r.body.dump();
    ASSERT_TRUE(r.body.contains("error")) << r.body.dump();
    const json& e = r.body["error"];
    EXPECT_EQ(e.size(), 4u) << e.dump();
    EXPECT_EQ(e["param"], param);
    EXPECT_TRUE(e.contains("code"));
    EXPECT_EQ(e["type"], status >= 500 ? "server_error" : "invalid_request_error");
    EXPECT_NE(e["message"].get<std::string>().find(part), std::string::npos) << e["message"];
  };
  int invalid_sent = 0;
  expect_error(post_raw(h, "POST", "/v1/completions", R"({"prompt": "a",)"), 400, nullptr, "not valid JSON");
  ++invalid_sent;
  expect_error(post(h, {{"prompt", "a"}, {"max_tokns", 3}}), 400, "max_tokns", "did you mean 'max_tokens'?");
  ++invalid_sent;
  expect_error(post(h, {{"prompt", "a"}, {"temperature", "warm"}}), 400, "temperature", "must be a number");
  ++invalid_sent;
  const Reply wrong_model = post(h, {{"prompt", "a"}, {"model", "gpt-4"}});
  expect_error(wrong_model, 404, "model", "does not exist");
  EXPECT_EQ(wrong_model.body["error"]["code"], "model_not_found");
  ++invalid_sent;
  // Refused by the loop: longer than the model's context of 128 tokens, a token outside the vocabulary.
  json too_long = greedy("", 16);
  too_long["prompt"] = std::vector<int32_t>(120, 11);
  expect_error(post(h, too_long), 400, nullptr, "context");
  ++invalid_sent;
  json bad_id = greedy("", 4);
  bad_id["prompt"] = std::vector<int32_t>{1, 50257};
  expect_error(post(h, bad_id), 400, nullptr, "vocabulary");
  ++invalid_sent;

  expect_error(post_raw(h, "GET", "/v1/completions", ""), 404, nullptr, "no route for GET /v1/completions");
  expect_error(post_raw(h, "POST", "/v1/chat/completion", "{}"), 404, nullptr, "no route");

  const Reply health = post_raw(h, "GET", "/health", "");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, json::parse(R"({"status":"ok"})"));
  const Reply models = post_raw(h, "GET", "/v1/models", "");
  EXPECT_EQ(models.status, 200);
  EXPECT_EQ(models.body["object"], "list");
  ASSERT_EQ(models.body["data"].size(), 1u);
  EXPECT_EQ(models.body["data"][0]["id"], kModelName);
  EXPECT_EQ(models.body["data"][0]["object"], "model");
  const Reply one = post_raw(h, "GET", std::string("/v1/models/") + kModelName, "");
  EXPECT_EQ(one.status, 200);
  EXPECT_EQ(one.body, models.body["data"][0]);
  const Reply other = post_raw(h, "GET", "/v1/models/gpt-4", "");
  expect_error(other, 404, "model", "'gpt-4' does not exist");
  EXPECT_EQ(other.body["error"]["code"], "model_not_found");

  // What `curl -d` sends: a form content type. Any body is read as JSON, whatever its content type and size.
  httplib::Client cli = h.client();
  const auto form = cli.Post("/v1/completions", R"({"prompt": [1, 2], "max_tokens": 2})",
                             "application/x-www-form-urlencoded");
  ASSERT_TRUE(form);
  EXPECT_EQ(form->status, 200) << form->body;
  const auto big = cli.Post("/v1/completions",
                            R"({"max_tokens": 2, "prompt": [)" + std::string(4500, ' ') + "1, 2]}",
                            "application/x-www-form-urlencoded");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 200) << big->body;

  const auto m = metrics(h);
  EXPECT_EQ(m.at("dspeed_requests_rejected_total{reason=\"invalid\"}"), invalid_sent);  // lookups are not requests
  EXPECT_EQ(m.at("dspeed_requests_total"), 2);  // the form-encoded requests
  expect_idle(h);
}

TEST(Server, OverloadGets429AtOnceAndLaterRequestsSucceed) {
  // max_pending 2 and a loop that is not running yet: the first two requests are accepted and stay queued, so
  // the 429s below provably did not wait for capacity.
  Harness h(/*max_pending=*/2, /*start_loop=*/false);
  std::vector<Reply> first(2);
  std::atomic<int> answered{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      first[i] = post(h, greedy(kPrompts[i], 8));
      ++answered;
    });
  }
  ASSERT_TRUE(wait_for([&] { return h.loop.stats().requests_accepted == 2; }));

  for (int k = 0; k < 3; ++k) {
    const auto t0 = Clock::now();
    const Reply r = post(h, greedy(kPrompts[2], 8));
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_EQ(r.status, 429) << r.body.dump();
    EXPECT_EQ(r.body["error"]["type"], "rate_limit_exceeded");
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find("limit of 2"), std::string::npos)
        << r.body.dump();
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find("retry later"), std::string::npos);
    bool retry_after = false;
    for (const auto& [k2, v] : r.headers) retry_after |= k2 == "Retry-After";
    EXPECT_TRUE(retry_after);
    EXPECT_LT(seconds, 5.0);  // generous: a 429 never waits for the queue to move
  }
  EXPECT_EQ(answered.load(), 0) << "the queued requests cannot have finished: the loop is not running";

  h.loop.start();
  for (auto& t : threads) t.join();
  for (const Reply& r : first) {
    EXPECT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["usage"]["completion_tokens"], 8);
  }
  const Reply later = post(h, greedy(kPrompts[3], 8));
  EXPECT_EQ(later.status, 200) << later.body.dump();
  const auto m = metrics(h);
  EXPECT_EQ(m.at("dspeed_requests_rejected_total{reason=\"queue_full\"}"), 3);
  EXPECT_EQ(m.at("dspeed_requests_total"), 3);
  expect_idle(h);
}

// Steps the loop on this thread, slowly, until pred holds (or limit steps).
template <typename Pred>
bool step_until(inference::ServingLoop& loop, Pred pred, int limit = 400) {
  for (int i = 0; i < limit && !pred(); ++i) {
    loop.step();
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

TEST(Server, ClientLeavingMidStreamCancelsTheRequest) {
  Harness h(256, /*start_loop=*/false);  // stepped here, so the generation is still running when the client goes
  json body = greedy(kPrompts[1], 100);
  body["stream"] = true;
  std::atomic<bool> first_seen{false};
  std::thread client([&] { post_stream(h, body, /*stop_after_first=*/true, &first_seen); });
  ASSERT_TRUE(step_until(h.loop, [&] { return first_seen.load(); }));
  client.join();  // the client has closed its connection
  ASSERT_TRUE(step_until(h.loop, [&] { return h.loop.stats().requests_cancelled == 1; }));
  const inference::LoopStats s = h.loop.stats();
  EXPECT_EQ(s.requests_finished, 0);
  EXPECT_LT(s.completion_tokens, 100);
  h.loop.start();
  const auto m = metrics(h);
  EXPECT_GE(m.at("dspeed_requests_cancelled_total"), 1);
  expect_idle(h);
}

TEST(Server, ClientLeavingAWholeRequestCancelsIt) {
  Harness h(256, /*start_loop=*/false);
  const std::string body = greedy(kPrompts[2], 100).dump();
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(h.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  ASSERT_TRUE(wait_for([&] { return h.loop.stats().requests_accepted == 1; }));
  // A few tokens in, the client goes away without reading anything.
  ASSERT_TRUE(step_until(h.loop, [&] { return h.loop.stats().completion_tokens >= 3; }));
  ::close(fd);
  ASSERT_TRUE(step_until(h.loop, [&] { return h.loop.stats().requests_cancelled == 1; }));
  EXPECT_EQ(h.loop.stats().requests_finished, 0);
  EXPECT_LT(h.loop.stats().completion_tokens, 100);
  h.loop.start();
  expect_idle(h);
}

TEST(Server, SeededSamplingRepeatsAndStopStringsCut) {
  Harness h;
  json seeded = {{"prompt", kPrompts[0]}, {"max_tokens", 16}, {"temperature", 1.0}, {"seed", 1234},
                 {"ignore_eos", true}};
  const Reply a = post(h, seeded);
  ASSERT_EQ(a.status, 200) << a.body.dump();
  // The same seed again, this time beside other requests: the same text.
  std::vector<std::thread> noise;
  for (int i = 1; i < 4; ++i) noise.emplace_back([&, i] { post(h, greedy(kPrompts[i], 16)); });
  const Reply b = post(h, seeded);
  for (auto& t : noise) t.join();
  EXPECT_EQ(b.body["choices"][0]["text"], a.body["choices"][0]["text"]);
  seeded["seed"] = 1235;
  const Reply c = post(h, seeded);
  EXPECT_NE(c.body["choices"][0]["text"], a.body["choices"][0]["text"]) << "the seed must matter";

  // Stop: a two-character piece of the greedy text; the answer must end right before its first occurrence.
  const Reply full = post(h, greedy(kPrompts[1], 24));
  const std::string text = full.body["choices"][0]["text"].get<std::string>();
  std::string stop;
  for (size_t p = 1; p + 2 <= text.size() && stop.empty(); ++p) {
    const std::string piece = text.substr(p, 2);
    if (std::isalnum(static_cast<unsigned char>(piece[0])) && std::isalnum(static_cast<unsigned char>(piece[1])) &&
        text.find(piece) > 0) {
      stop = piece;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no usable stop string in: " << text;
  json stopped = greedy(kPrompts[1], 24);
  stopped["stop"] = {"\x01never", stop};
  const Reply r = post(h, stopped);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["choices"][0]["text"], text.substr(0, text.find(stop))) << "stop '" << stop << "'";
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  EXPECT_LE(r.body["usage"]["completion_tokens"].get<int>(), 24);
  stopped["stream"] = true;
  const Streamed s = post_stream(h, stopped);
  EXPECT_EQ(s.text, text.substr(0, text.find(stop)));
  EXPECT_EQ(s.finish_reason, "stop");
  EXPECT_TRUE(s.done_last);
  expect_idle(h);
}

TEST(Server, PortInUseIsAnIoErrorNamingHostAndPort) {
  Harness h;
  ServerOptions o = Harness::options();
  o.port = h.port;
  HttpServer second(h.loop, &server_tokenizer(), o);
  try {
    second.start();
    FAIL() << "a second server bound the same port";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(h.port)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--port"), std::string::npos) << e.what();
  }
  expect_idle(h);
}

}  // namespace
}  // namespace ds::serve
