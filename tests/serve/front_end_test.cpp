// The HTTP front end under load, against hostile clients, and shutting down. Clients are raw sockets, so a test
// controls every byte and every pause; the loop is stepped by the test (or by a thread of its own at a set pace)
// so that "still streaming" is a fact during the measurements. Latency bounds are generous on purpose (a shared
// 2-core machine): a front end that ties a thread to each connection misses them by seconds, not milliseconds.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "serve/server_harness.h"

namespace ds::serve {
namespace {

using namespace harness;

// A blocking TCP connection to the server.
class Raw {
 public:
  explicit Raw(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Raw() {
    if (fd_ >= 0) ::close(fd_);
  }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }
  bool send(std::string_view bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Reads until the server closes the connection or `limit` passes; returns what arrived.
  std::string read_to_close(std::chrono::milliseconds limit = 20s) {
    std::string out;
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (!read_some(out, 50)) break;
    }
    return out;
  }
  // Reads until `marker` has arrived (or the connection closes, or `limit` passes).
  std::string read_until(std::string_view marker, std::chrono::milliseconds limit = 20s) {
    std::string out;
    const auto deadline = Clock::now() + limit;
    while (out.find(marker) == std::string::npos && Clock::now() < deadline) {
      if (!read_some(out, 50)) break;
    }
    return out;
  }
  // Appends what is readable within timeout_ms; false once the peer has closed (or on error).
  bool read_some(std::string& out, int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return true;
    char buf[16384];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    out.append(buf, static_cast<size_t>(n));
    return true;
  }
  bool closed() const { return closed_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
};

std::string completion_request(const json& body, bool keep_alive = false) {
  const std::string b = body.dump();
  return "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
         std::string(keep_alive ? "" : "Connection: close\r\n") + "Content-Length: " + std::to_string(b.size()) +
         "\r\n\r\n" + b;
}

json stream_ids(int max_tokens) {
  return {{"prompt", {11, 12, 13, 14}}, {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true},
          {"stream", true}};
}

// One GET /health on a new connection; seconds from connect to the whole response.
double health_seconds(int port, int* status = nullptr) {
  const auto t0 = Clock::now();
  Raw c(port);
  if (!c.connected() || !c.send("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) return 1e9;
  const std::string reply = c.read_to_close(10s);
  if (status) *status = reply.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(reply.c_str() + 9) : 0;
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

// Steps the loop on a thread of its own, a pass every `pace`, until stopped.
class Stepper {
 public:
  Stepper(inference::ServingLoop& loop, std::chrono::milliseconds pace)
      : thread_([this, &loop, pace] {
          while (!stop_) {
            loop.step();
            std::this_thread::sleep_for(pace);
          }
        }) {}
  ~Stepper() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(FrontEnd, HealthAnswersBeside256StreamsAnd64SlowClients) {
  constexpr int kStreams = 256, kSlow = 32, kStalled = 32, kTokens = 100;
  // 64 sequences of 104 tokens (7 blocks each) run at once; the rest wait in the queue with their streams open.
  Harness h(/*max_pending=*/kStreams, /*start_loop=*/false, &server_tokenizer(), Harness::options(),
            /*kv_blocks=*/480);
  std::vector<std::unique_ptr<Raw>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<Raw>(h.port));
    ASSERT_TRUE(streams.back()->connected());
    ASSERT_TRUE(streams.back()->send(completion_request(stream_ids(kTokens))));
  }
  // Slow clients dribble a header line now and then; stalled ones stop in the middle of a body.
  std::vector<std::unique_ptr<Raw>> slow, stalled;
  for (int i = 0; i < kSlow; ++i) {
    slow.push_back(std::make_unique<Raw>(h.port));
    ASSERT_TRUE(slow.back()->send("GET /health HTTP/1.1\r\n"));
  }
  for (int i = 0; i < kStalled; ++i) {
    stalled.push_back(std::make_unique<Raw>(h.port));
    ASSERT_TRUE(stalled.back()->send("POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"prom"));
  }
  ASSERT_TRUE(wait_for([&] { return h.loop.stats().requests_accepted == kStreams; }, 30s))
      << h.loop.stats().requests_accepted << " of " << kStreams << " accepted";

  // The queue is full: one more request is refused at once.
  {
    Raw extra(h.port);
    ASSERT_TRUE(extra.send(completion_request(stream_ids(4))));
    const std::string reply = extra.read_to_close(10s);
    EXPECT_EQ(reply.rfind("HTTP/1.1 429", 0), 0u) << reply.substr(0, 200);
    EXPECT_NE(reply.find("Retry-After: 1"), std::string::npos);
  }

  std::atomic<bool> reading{true};
  std::vector<std::string> received(kStreams);
  std::thread reader([&] {  // until every stream's connection is closed by the server (Connection: close)
    std::vector<bool> open(kStreams, true);
    int left = kStreams;
    for (const auto deadline = Clock::now() + 120s; left > 0 && Clock::now() < deadline;) {
      std::vector<pollfd> fds;
      std::vector<int> which;
      for (int i = 0; i < kStreams; ++i) {
        if (!open[i]) continue;
        fds.push_back({streams[i]->fd(), POLLIN, 0});
        which.push_back(i);
      }
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      for (size_t k = 0; k < fds.size(); ++k) {
        if (fds[k].revents == 0) continue;
        if (!streams[which[k]]->read_some(received[which[k]], 0)) {
          open[which[k]] = false;
          --left;
        }
      }
    }
  });

  std::vector<double> latencies;
  std::thread dribble([&] {
    for (int round = 0; reading && round < 1000; ++round) {
      for (auto& c : slow) c->send("X-Slow: 1\r\n");
      std::this_thread::sleep_for(300ms);
    }
  });
  {
    const Stepper stepper(h.loop, 3ms);
    for (int i = 0; i < 60; ++i) {
      int status = 0;
      latencies.push_back(health_seconds(h.port, &status));
      EXPECT_EQ(status, 200);
      std::this_thread::sleep_for(20ms);
      if (i == 30) {
        const auto m = metrics(h);
        EXPECT_GE(m.at("dspeed_http_connections"), kSlow + kStalled) << "the slow clients are held, not dropped";
        EXPECT_GT(m.at("dspeed_running_sequences"), 0) << "the probes must run while streams generate";
      }
    }
    reader.join();
    reading = false;
    dribble.join();
    EXPECT_EQ(h.loop.stats().requests_finished, kStreams);
  }
  const double p50 = percentile(latencies, 0.5), p99 = percentile(latencies, 0.99);
  std::printf("/health beside %d streams and %d slow clients: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", kStreams,
              kSlow + kStalled, 1e3 * p50, 1e3 * p99, 1e3 * percentile(latencies, 1.0));
  EXPECT_LT(p50, 0.1);
  EXPECT_LT(percentile(latencies, 1.0), 2.0);
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_NE(received[i].find("data: [DONE]"), std::string::npos) << "stream " << i << ": " << received[i].size()
                                                                    << " bytes";
    EXPECT_EQ(received[i].find("\"error\""), std::string::npos) << "stream " << i;
  }
  slow.clear();
  stalled.clear();
  h.loop.start();
  expect_idle(h);
}

TEST(FrontEnd, SlowAndIdleClientsAreCutOffByTheTimeouts) {
  ServerOptions o = Harness::options();
  o.read_timeout_s = 0.5;
  o.idle_timeout_s = 0.5;
  Harness h(256, true, &server_tokenizer(), o);
  Raw idle(h.port);
  Raw slow(h.port);
  ASSERT_TRUE(slow.send("GET /health HTTP/1.1\r\n"));
  Raw kept(h.port);  // one request, then silence on a kept-alive connection
  ASSERT_TRUE(kept.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto t0 = Clock::now();
  std::string got;
  for (int i = 0; i < 40 && !slow.closed(); ++i) {
    slow.send("X-Slow: 1\r\n");  // a line every 100 ms: never idle, never done
    slow.read_some(got, 100);
  }
  const double slow_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_TRUE(slow.closed()) << "a request dribbled for 4 s was not cut off";
  EXPECT_LT(slow_s, 3.0);
  EXPECT_TRUE(got.empty()) << got;
  idle.read_to_close(5s);
  EXPECT_TRUE(idle.closed());
  const std::string reply = kept.read_to_close(5s);
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_TRUE(kept.closed());
  expect_idle(h);
}

TEST(FrontEnd, ConnectionsBeyondTheLimitGet503) {
  ServerOptions o = Harness::options();
  o.max_connections = 4;
  Harness h(256, true, &server_tokenizer(), o);
  std::vector<std::unique_ptr<Raw>> held;
  for (int i = 0; i < 4; ++i) held.push_back(std::make_unique<Raw>(h.port));
  Raw fifth(h.port);
  const std::string reply = fifth.read_to_close(10s);
  EXPECT_EQ(reply.rfind("HTTP/1.1 503", 0), 0u) << reply;
  EXPECT_NE(reply.find("4 connections open"), std::string::npos) << reply;
  held.clear();
  ASSERT_TRUE(wait_for([&] { return health_seconds(h.port) < 1e9; }));
  const auto m = metrics(h);
  EXPECT_EQ(m.at("dspeed_http_connections_refused_total"), 1);
  expect_idle(h);
}

TEST(FrontEnd, MalformedAndOversizedRequestsGetErrorsAndExpectContinueIsHonoured) {
  Harness h;
  auto status_of = [](const std::string& reply) {
    return reply.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(reply.c_str() + 9) : 0;
  };
  {
    Raw c(h.port);
    c.send("NOT AN HTTP REQUEST\r\n\r\n");
    const std::string reply = c.read_to_close(10s);
    EXPECT_EQ(status_of(reply), 400) << reply;
    EXPECT_NE(reply.find("malformed HTTP request"), std::string::npos) << reply;
  }
  {
    Raw c(h.port);
    c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n{");
    const std::string reply = c.read_to_close(10s);
    EXPECT_EQ(status_of(reply), 413) << reply;
    EXPECT_NE(reply.find("16 MiB"), std::string::npos) << reply;
  }
  {
    Raw c(h.port);
    c.send("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(70000, 'a') + "\r\n\r\n");
    EXPECT_EQ(status_of(c.read_to_close(10s)), 431);
  }
  {
    // What curl does with a body over 1 KiB: headers, then the body only after "100 Continue".
    const std::string body = json{{"prompt", {1, 2, 3}}, {"max_tokens", 3}}.dump();
    Raw c(h.port);
    c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
           "Content-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n");
    const std::string interim = c.read_until("\r\n\r\n", 5s);
    EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.send(body);
    const std::string reply = c.read_to_close(10s);
    EXPECT_EQ(status_of(reply), 200) << reply;
    EXPECT_NE(reply.find("\"completion_tokens\":3"), std::string::npos) << reply;
  }
  {
    // Two requests pipelined on one connection: both answered, in order.
    Raw c(h.port);
    c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const std::string reply = c.read_to_close(10s);
    const size_t second = reply.find("HTTP/1.1 200", 1);
    EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
    ASSERT_NE(second, std::string::npos) << reply;
    EXPECT_NE(reply.find(R"("object":"list")", second), std::string::npos) << reply;
  }
  expect_idle(h);
}

// Streams and a whole request still queued when the deadline passes (the loop is not stepped): each stream gets
// the shutdown event and a clean end of its chunked body, the whole request 503, an idle connection is closed.
TEST(FrontEnd, ShutdownEndsOpenStreamsWithTheShutdownEvent) {
  ServerOptions o = Harness::options();
  o.shutdown_timeout_s = 0.3;
  Harness h(256, /*start_loop=*/false, &server_tokenizer(), o);
  Raw idle(h.port);
  ASSERT_TRUE(idle.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(idle.read_until("\"ok\"}", 5s).rfind("HTTP/1.1 200", 0), 0u);
  std::vector<std::unique_ptr<Raw>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::make_unique<Raw>(h.port));
    ASSERT_TRUE(streams.back()->send(completion_request(stream_ids(50), /*keep_alive=*/true)));
  }
  Raw whole(h.port);
  json whole_body = stream_ids(50);
  whole_body["stream"] = false;
  ASSERT_TRUE(whole.send(completion_request(whole_body)));
  ASSERT_TRUE(wait_for([&] { return h.loop.stats().requests_accepted == 5; }));

  const auto t0 = Clock::now();
  std::thread stopper([&] { h.server.shutdown(); });
  for (auto& s : streams) {
    const std::string reply = s->read_to_close(10s);
    EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
    EXPECT_NE(reply.find("Transfer-Encoding: chunked"), std::string::npos) << reply;
    EXPECT_NE(reply.find("the server is shutting down"), std::string::npos) << reply;
    EXPECT_EQ(reply.substr(reply.size() - 5), "0\r\n\r\n") << "not a clean end of the chunked body: " << reply;
    EXPECT_EQ(reply.find("[DONE]"), std::string::npos);
    EXPECT_TRUE(s->closed());
  }
  const std::string reply = whole.read_to_close(10s);
  EXPECT_EQ(reply.rfind("HTTP/1.1 503", 0), 0u) << reply;
  EXPECT_NE(reply.find("shutting down"), std::string::npos) << reply;
  idle.read_to_close(5s);
  EXPECT_TRUE(idle.closed());
  stopper.join();
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(took, 0.3) << "the running requests did not get their time";
  EXPECT_LT(took, 5.0);
  EXPECT_FALSE(Raw(h.port).connected()) << "the server still accepts connections after shutdown";
  h.loop.step();  // the cancellations take effect before the next pass
  const inference::LoopStats s = h.loop.stats();
  EXPECT_EQ(s.requests_cancelled, 5);
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(s.waiting + s.running, 0);
}

// Requests running when the shutdown begins finish normally within the deadline; no new connection is taken.
TEST(FrontEnd, ShutdownLetsRunningRequestsFinish) {
  ServerOptions o = Harness::options();
  o.shutdown_timeout_s = 60;
  Harness h(256, /*start_loop=*/false, &server_tokenizer(), o);
  std::vector<std::unique_ptr<Raw>> streams;
  for (int i = 0; i < 3; ++i) {
    streams.push_back(std::make_unique<Raw>(h.port));
    ASSERT_TRUE(streams.back()->send(completion_request(stream_ids(20))));
  }
  ASSERT_TRUE(wait_for([&] { return h.loop.stats().requests_accepted == 3; }));
  const auto t0 = Clock::now();
  std::thread stopper([&] { h.server.shutdown(); });
  ASSERT_TRUE(wait_for([&] { return !Raw(h.port).connected(); })) << "the listening socket stayed open";
  h.loop.start();
  for (auto& s : streams) {
    const std::string reply = s->read_to_close(20s);
    EXPECT_NE(reply.find("\"finish_reason\":\"length\""), std::string::npos) << reply;
    EXPECT_NE(reply.find("data: [DONE]"), std::string::npos) << reply;
    EXPECT_EQ(reply.find("shutting down"), std::string::npos) << reply;
  }
  stopper.join();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 30.0) << "shutdown waited past the last request";
  EXPECT_EQ(h.loop.stats().requests_finished, 3);
}

}  // namespace
}  // namespace ds::serve
