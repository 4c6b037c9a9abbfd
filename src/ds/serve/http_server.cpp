// HttpServer on cpp-httplib 0.11.4. Each completion gets a Channel (mutex, condvar, deque of events) shared by the
// loop's sink and the HTTP worker, so either side may go first. Workers wait on it in 100 ms slices and after
// each ask two questions: is the server stopping, and is the client still there? httplib 0.11.4 tells a handler
// nothing about its connection (Request::is_connection_closed came later), so ConnectionProbe finds the accepted
// socket by its address pair in /proc/self/fd and polls it for a hang-up; that lets a non-streamed request, or a
// stream still waiting for its first token, be cancelled when its client leaves. A stream also notices at once
// when a write fails. See Note [Finding the connection].
#include "ds/serve/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/inference/serving_loop.h"
#include "ds/serve/metrics.h"
#include "ds/serve/openai_protocol.h"

namespace ds::serve {

using inference::FinishReason;
using inference::GenerationEvent;

namespace {

constexpr auto kWaitSlice = std::chrono::milliseconds(100);
constexpr const char* kJson = "application/json";

// Note [Finding the connection]
// A handler knows its connection only as Request::local_port and remote_addr:remote_port. The accepted socket is
// the one fd of this process whose getsockname port is local_port and whose getpeername is the remote address
// (a client socket in the same process, as in the tests, has the two the other way round). The fd stays open while
// the handler or its content provider runs (httplib closes it after both), so the number cannot be reused under
// us. Hang-up is POLLRDHUP/POLLHUP/POLLERR without reading anything; a client that half-closes its side after
// sending the request (shutdown(SHUT_WR)) therefore counts as gone. If no fd matches, the probe says "connected"
// and the request simply runs to its end.
class ConnectionProbe {
 public:
  explicit ConnectionProbe(const httplib::Request& req)
      : local_port_(req.local_port), remote_addr_(req.remote_addr), remote_port_(req.remote_port) {}

  bool client_gone() {
    if (!searched_) {
      searched_ = true;
      fd_ = find_fd();
    }
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
  }

 private:
  static bool endpoint(const sockaddr_storage& addr, socklen_t len, std::string& host, int& port) {
    char buf[NI_MAXHOST];
    char serv[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, buf, sizeof buf, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      return false;
    }
    host = buf;
    port = std::atoi(serv);
    return true;
  }

  int find_fd() const {
    if (local_port_ <= 0 || remote_port_ <= 0) return -1;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      char* end = nullptr;
      const std::string name = entry.path().filename().string();
      const long fd = std::strtol(name.c_str(), &end, 10);
      if (end == name.c_str() || *end != '\0') continue;
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;
      if (addr.ss_family != AF_INET && addr.ss_family != AF_INET6) continue;
      std::string host;
      int port = 0;
      if (!endpoint(addr, len, host, port) || port != local_port_) continue;
      len = sizeof addr;
      if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;
      if (!endpoint(addr, len, host, port) || port != remote_port_ || host != remote_addr_) continue;
      return static_cast<int>(fd);
    }
    return -1;
  }

  int local_port_;
  std::string remote_addr_;
  int remote_port_;
  bool searched_ = false;
  int fd_ = -1;
};

// Events of one request, from the loop's thread to the HTTP worker.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<GenerationEvent> events;
};

enum class Wait { events, timeout, client_gone, stopping };

void set_error(httplib::Response& res, int status, std::string_view message, std::string_view type,
               const std::optional<std::string>& param = std::nullopt,
               const std::optional<std::string>& code = std::nullopt) {
  res.status = status;
  res.set_content(error_body(message, type, param, code), kJson);
}

}  // namespace

struct HttpServer::Impl {
  Impl(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options)
      : loop(loop), tokenizer(tokenizer), options(std::move(options)) {
    std::random_device rd;
    id_prefix = fmt::format("{:08x}", rd());
    created = static_cast<int64_t>(std::time(nullptr));
  }

  inference::ServingLoop& loop;
  const data::BpeTokenizer* tokenizer;
  ServerOptions options;
  std::string id_prefix;  // per server, so completion ids differ across restarts
  int64_t created = 0;

  std::unique_ptr<httplib::Server> svr;
  std::thread thread;
  int bound_port = -1;
  std::atomic<bool> stopping{false};
  std::mutex state_mu;
  std::condition_variable state_cv;
  bool listening = false;

  std::atomic<int64_t> rejected_queue_full{0};
  std::atomic<int64_t> rejected_invalid{0};

  // Tokenizer copies for the workers (encode() is not const; copies share the tables).
  std::mutex tok_mu;
  std::vector<std::unique_ptr<data::BpeTokenizer>> tok_free;

  std::vector<int32_t> encode(const std::string& text) {
    std::unique_ptr<data::BpeTokenizer> tok;
    {
      const std::lock_guard<std::mutex> lock(tok_mu);
      if (!tok_free.empty()) {
        tok = std::move(tok_free.back());
        tok_free.pop_back();
      }
    }
    if (!tok) tok = std::make_unique<data::BpeTokenizer>(*tokenizer);
    std::vector<int32_t> ids = tok->encode(text);
    const std::lock_guard<std::mutex> lock(tok_mu);
    tok_free.push_back(std::move(tok));
    return ids;
  }

  // Takes whatever events have arrived, waiting one slice at most for the first. The client is probed every
  // time (one poll() call), also when events came: a whole request never writes before it ends, so this is its
  // only way to notice a client that left while tokens were flowing.
  Wait wait(Channel& ch, std::deque<GenerationEvent>& out, ConnectionProbe& probe) {
    bool got = false;
    {
      std::unique_lock<std::mutex> lock(ch.mu);
      ch.cv.wait_for(lock, kWaitSlice, [&] { return !ch.events.empty() || stopping.load(); });
      if (!ch.events.empty()) {
        out.swap(ch.events);
        ch.events.clear();
        got = true;
      }
    }
    if (got && stopping) return Wait::events;  // hand over what arrived before the shutdown
    if (stopping) return Wait::stopping;
    if (probe.client_gone()) return Wait::client_gone;
    return got ? Wait::events : Wait::timeout;
  }

  void routes();
  void completions(const httplib::Request& req, httplib::Response& res);
  void respond_whole(const httplib::Request& req, httplib::Response& res, std::shared_ptr<Channel> ch,
                     uint64_t uid, const CompletionHeader& header, bool with_ids);
  void respond_stream(const httplib::Request& req, httplib::Response& res, std::shared_ptr<Channel> ch,
                      uint64_t uid, CompletionHeader header, bool with_ids, bool include_usage);
};

namespace {

// Every handler's errors become OpenAI error bodies: ApiError as it says, other ds::Error 400, the rest 500.
template <typename F>
httplib::Server::Handler guarded(F f, std::atomic<int64_t>* invalid_counter = nullptr) {
  return [f = std::move(f), invalid_counter](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const ApiError& e) {
      if (invalid_counter) ++*invalid_counter;
      res.status = e.status();
      res.set_content(error_body(e), kJson);
    } catch (const Error& e) {
      if (invalid_counter) ++*invalid_counter;
      set_error(res, 400, e.what(), "invalid_request_error");
    } catch (const std::exception& e) {
      set_error(res, 500, fmt::format("[serve] internal error: {}", e.what()), "server_error");
    }
  };
}

// Cancels a submitted request unless disarmed (the response, or the stream's releaser, took it over).
struct CancelGuard {
  inference::ServingLoop& loop;
  uint64_t uid;
  bool armed = true;
  ~CancelGuard() {
    if (armed) loop.cancel(uid);
  }
};

}  // namespace

void HttpServer::Impl::routes() {
  svr->Get("/health", guarded([](const httplib::Request&, httplib::Response& res) {
             res.set_content(R"({"status":"ok"})", kJson);
           }));
  auto model_object = [this] {
    nlohmann::ordered_json model;
    model["id"] = options.model_name;
    model["object"] = "model";
    model["created"] = created;
    model["owned_by"] = "dspeed";
    model["max_model_len"] = loop.engine().max_context();
    return model;
  };
  svr->Get("/v1/models", guarded([model_object](const httplib::Request&, httplib::Response& res) {
             nlohmann::ordered_json list;
             list["object"] = "list";
             list["data"] = nlohmann::ordered_json::array({model_object()});
             res.set_content(list.dump(), kJson);
           }));
  svr->Get(R"(/v1/models/(.+))", guarded([this, model_object](const httplib::Request& req, httplib::Response& res) {
             const std::string id = req.matches[1];
             if (id != options.model_name) {
               throw ApiError(404, fmt::format("[serve] the model '{}' does not exist; this server serves '{}'",
                                               id.substr(0, 200), options.model_name),
                              std::string("model"), "invalid_request_error", std::string("model_not_found"));
             }
             res.set_content(model_object().dump(), kJson);
           }));
  svr->Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
             HttpCounters http;
             http.rejected_queue_full = rejected_queue_full.load();
             http.rejected_invalid = rejected_invalid.load();
             res.set_content(render_metrics(loop.stats(), http), "text/plain; version=0.0.4");
           }));
  svr->Post("/v1/completions",
            guarded([this](const httplib::Request& req, httplib::Response& res) { completions(req, res); },
                    &rejected_invalid));

  // Unknown paths and methods (httplib answers 404 with an empty body), and httplib's own 4xx (bad request line,
  // payload too large): give them an OpenAI error body. Bodies our handlers wrote are left alone.
  svr->set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 404) {
      set_error(res, 404,
                fmt::format("[serve] no route for {} {}; this server answers POST /v1/completions, GET /v1/models, "
                            "GET /v1/models/{{id}}, GET /health and GET /metrics",
                            req.method, req.path),
                "invalid_request_error");
    } else if (res.status == 413) {
      // cpp-httplib parses a form-encoded body (what `curl -d` sends without a Content-Type) and caps it at 8 KiB.
      const bool form = req.get_header_value("Content-Type").find("x-www-form-urlencoded") != std::string::npos;
      set_error(res, 413,
                form ? std::string("[serve] the request body was sent as a form (Content-Type "
                                   "application/x-www-form-urlencoded, what curl -d sends by default), and form "
                                   "bodies are limited to 8 KiB; send it as JSON: -H 'Content-Type: application/json'")
                     : std::string("[serve] the request body is larger than the server's limit of 16 MiB; send a "
                                   "shorter prompt (token ids are about a third of the text's size)"),
                "invalid_request_error");
    } else {
      set_error(res, res.status,
                fmt::format("[serve] the HTTP request was refused with status {} ({} {})", res.status, req.method,
                            req.path),
                res.status >= 500 ? "server_error" : "invalid_request_error");
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    set_error(res, 500, fmt::format("[serve] internal error: {}", what), "server_error");
  });
}

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  CompletionRequest cr = parse_completion_request(req.body, options.model_name);
  std::vector<int32_t> prompt;
  if (cr.prompt_text) {
    if (!tokenizer) {
      throw ApiError(400, "[serve] this server has no tokenizer, so it cannot take a text prompt; send the prompt "
                          "as an array of token ids",
                     std::string("prompt"));
    }
    // An empty text prompt is conditioned on the end-of-text token, as OpenAI does.
    prompt = cr.prompt_text->empty() ? std::vector<int32_t>{tokenizer->eot_token()} : encode(*cr.prompt_text);
  } else {
    prompt = std::move(cr.prompt_ids);
  }
  if (!tokenizer && !cr.sampling.stop.empty()) {
    throw ApiError(400, "[serve] this server has no tokenizer, so it cannot match stop strings; use "
                        "'stop_token_ids' instead",
                   std::string("stop"));
  }

  auto ch = std::make_shared<Channel>();
  inference::GenerationRequest gr;
  gr.prompt = std::move(prompt);
  gr.sampling = std::move(cr.sampling);
  gr.sink = [ch](const GenerationEvent& ev) {
    {
      const std::lock_guard<std::mutex> lock(ch->mu);
      ch->events.push_back(ev);
    }
    ch->cv.notify_one();
  };
  const inference::SubmitResult sr = loop.submit(std::move(gr));
  if (sr.status == inference::SubmitStatus::queue_full) {
    ++rejected_queue_full;
    res.set_header("Retry-After", "1");
    set_error(res, 429, sr.error, "rate_limit_exceeded", std::nullopt, std::string("rate_limit_exceeded"));
    return;
  }
  if (sr.status == inference::SubmitStatus::invalid) throw ApiError(400, sr.error);
  if (sr.status == inference::SubmitStatus::stopping) {
    set_error(res, 503, sr.error, "server_error");
    return;
  }

  CompletionHeader header;
  header.id = fmt::format("cmpl-{}{:08x}", id_prefix, sr.uid);
  header.created = static_cast<int64_t>(std::time(nullptr));
  header.model = options.model_name;
  const bool with_ids = cr.prompt_is_ids();
  if (cr.stream) {
    respond_stream(req, res, std::move(ch), sr.uid, std::move(header), with_ids, cr.include_usage);
  } else {
    respond_whole(req, res, std::move(ch), sr.uid, header, with_ids);
  }
}

void HttpServer::Impl::respond_whole(const httplib::Request& req, httplib::Response& res,
                                     std::shared_ptr<Channel> ch, uint64_t uid, const CompletionHeader& header,
                                     bool with_ids) {
  CancelGuard guard{loop, uid};
  ConnectionProbe probe(req);
  std::string text;
  std::vector<int32_t> ids;
  std::deque<GenerationEvent> batch;
  while (true) {
    batch.clear();
    const Wait w = wait(*ch, batch, probe);
    if (w == Wait::timeout) continue;
    if (w == Wait::client_gone) {
      // Nobody will read this; the guard cancels the request so its KV blocks go back at once.
      set_error(res, 400, "[serve] the client closed the connection before the completion was ready",
                "invalid_request_error");
      return;
    }
    if (w == Wait::stopping) {
      set_error(res, 503, "[serve] the server is shutting down; retry on another instance", "server_error");
      return;
    }
    for (const GenerationEvent& ev : batch) {
      text += ev.text;
      ids.insert(ids.end(), ev.tokens.begin(), ev.tokens.end());
      if (ev.finish == FinishReason::none) continue;
      guard.armed = false;
      if (ev.finish == FinishReason::error) {
        set_error(res, 500, ev.error, "server_error");
      } else if (ev.finish == FinishReason::cancelled) {
        set_error(res, 503, "[serve] the request was cancelled: the server is stopping", "server_error");
      } else {
        const CompletionUsage usage{ev.prompt_tokens, ev.completion_tokens};
        res.set_content(completion_response(header, text, inference::finish_reason_name(ev.finish), usage,
                                            with_ids ? &ids : nullptr),
                        kJson);
      }
      return;
    }
  }
}

void HttpServer::Impl::respond_stream(const httplib::Request& req, httplib::Response& res,
                                      std::shared_ptr<Channel> ch, uint64_t uid, CompletionHeader header,
                                      bool with_ids, bool include_usage) {
  struct State {
    std::shared_ptr<Channel> ch;
    uint64_t uid;
    CompletionHeader header;
    bool with_ids, include_usage;
    ConnectionProbe probe;
    std::deque<GenerationEvent> batch;
    bool finished = false;  // the loop has ended the request (or we have cancelled it)
  };
  auto st = std::make_shared<State>(State{std::move(ch), uid, std::move(header), with_ids, include_usage,
                                          ConnectionProbe(req), {}, false});
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, st](size_t, httplib::DataSink& sink) -> bool {
        auto cancel = [&] {
          if (!st->finished) loop.cancel(st->uid);
          st->finished = true;
        };
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        st->batch.clear();
        const Wait w = wait(*st->ch, st->batch, st->probe);
        if (w == Wait::timeout) return true;  // httplib calls again
        if (w == Wait::client_gone) {
          cancel();
          return false;
        }
        if (w == Wait::stopping) {
          cancel();
          write(stream_error_event("[serve] the server is shutting down", "server_error"));
          sink.done();
          return true;
        }
        for (const GenerationEvent& ev : st->batch) {
          if (ev.finish == FinishReason::error || ev.finish == FinishReason::cancelled) {
            st->finished = true;
            write(stream_error_event(ev.finish == FinishReason::error
                                         ? ev.error
                                         : std::string("[serve] the request was cancelled: the server is stopping"),
                                     "server_error"));
            sink.done();
            return true;
          }
          const bool last = ev.finish != FinishReason::none;
          if (!ev.text.empty() || (st->with_ids && !ev.tokens.empty()) || last) {
            std::optional<std::string_view> reason;
            if (last) reason = inference::finish_reason_name(ev.finish);
            const std::string chunk = stream_chunk(st->header, ev.text, reason,
                                                   st->with_ids ? &ev.tokens : nullptr, st->include_usage);
            if (!write(chunk)) {
              cancel();
              return false;
            }
          }
          if (last) {
            st->finished = true;
            if (st->include_usage) {
              write(stream_usage_chunk(st->header, {ev.prompt_tokens, ev.completion_tokens}));
            }
            write(std::string(kStreamDone));
            sink.done();
            return true;
          }
        }
        return true;
      },
      [this, st](bool) {
        // The stream ended early (write failure, server stop) without the loop finishing the request.
        if (!st->finished) loop.cancel(st->uid);
      });
}

HttpServer::HttpServer(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(loop, tokenizer, std::move(options))) {
  DS_CHECK_AS(ConfigError, impl_->options.http_threads > 0, "[serve] http_threads must be at least 1, got {}",
              impl_->options.http_threads);
  DS_CHECK_AS(ConfigError, impl_->options.port >= 0 && impl_->options.port <= 65535,
              "[serve] the port must be in [0, 65535] (0: any free port), got {}", impl_->options.port);
}

HttpServer::~HttpServer() {
  try {
    stop();
  } catch (const std::exception& e) {
    log_warning("[serve] stopping the HTTP server failed: {}", e.what());
  }
}

void HttpServer::start() {
  Impl& im = *impl_;
  DS_CHECK(!im.svr, "[serve] the HTTP server was started twice; create a new HttpServer to serve again");
  im.svr = std::make_unique<httplib::Server>();
  const size_t threads = static_cast<size_t>(im.options.http_threads);
  im.svr->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  im.svr->set_payload_max_length(size_t(16) << 20);
  // httplib's default is SO_REUSEPORT, which lets a second server bind a port in use and silently share its
  // connections. SO_REUSEADDR alone still allows a restart while old connections sit in TIME_WAIT.
  // The listening socket is remembered so its backlog can be raised after httplib's listen(fd, 5): with a backlog
  // of 5, a burst of new connections overflows it and the dropped SYNs are retried by the client a second later,
  // which showed up as one-second time-to-first-token outliers with 16 clients.
  socket_t listen_fd = INVALID_SOCKET;
  im.svr->set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  im.routes();

  const std::string& host = im.options.host;
  if (im.options.port == 0) {
    im.bound_port = im.svr->bind_to_any_port(host);
  } else {
    im.bound_port = im.svr->bind_to_port(host, im.options.port) ? im.options.port : -1;
  }
  if (im.bound_port <= 0) {
    im.svr.reset();
    DS_THROW(IoError,
             "[serve] cannot listen on {}:{}: the port is in use or the address is not one of this machine's; "
             "choose another --port (or --host)",
             host, im.options.port);
  }
  if (listen_fd != INVALID_SOCKET) ::listen(listen_fd, SOMAXCONN);  // Linux updates the backlog of a listening socket
  im.stopping = false;
  {
    const std::lock_guard<std::mutex> lock(im.state_mu);
    im.listening = true;
  }
  im.thread = std::thread([&im] {
    im.svr->listen_after_bind();
    const std::lock_guard<std::mutex> lock(im.state_mu);
    im.listening = false;
    im.state_cv.notify_all();
  });
  // stop() before the accept loop runs would be lost (httplib's stop() does nothing until then).
  while (!im.svr->is_running()) {
    {
      const std::lock_guard<std::mutex> lock(im.state_mu);
      if (!im.listening) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void HttpServer::stop() {
  Impl& im = *impl_;
  if (!im.thread.joinable()) return;
  // Waiting workers see `stopping` within a slice, cancel their requests and end their responses; httplib's
  // stop() closes the listening socket, and its thread pool joins the workers before listen returns.
  im.stopping = true;
  im.svr->stop();
  im.thread.join();
}

int HttpServer::port() const { return impl_->bound_port; }

void HttpServer::wait() {
  Impl& im = *impl_;
  std::unique_lock<std::mutex> lock(im.state_mu);
  im.state_cv.wait(lock, [&] { return !im.listening; });
}

}  // namespace ds::serve
