// HttpServer on Boost.Beast over Asio. See Note [Connections and threads] and Note [Shutting down].
#include "ds/serve/http_server.h"

#include <fmt/core.h>
#include <sys/socket.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/inference/serving_loop.h"
#include "ds/serve/chat_template.h"
#include "ds/serve/metrics.h"
#include "ds/serve/openai_protocol.h"

namespace ds::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using inference::FinishReason;
using inference::GenerationEvent;

// Note [Connections and threads]
// Every connection is a Session whose handlers run on a strand of its own, so a session's state needs no lock;
// io_threads threads run all strands. Nothing on the event loop blocks or computes at length: a completion's body
// is parsed and tokenized on the parse pool (a 16 MiB body takes a while), then the request is submitted back on
// the session's strand. The serving loop's sink posts each GenerationEvent to the strand, where it becomes bytes
// queued behind the write in flight; a client that reads slowly therefore costs memory bounded by its request's
// output, and one that reads nothing for write_timeout_s is dropped. While a request runs, the session waits on
// its socket becoming readable: a hang-up (a zero-byte peek) means the client left, and the request is cancelled
// at once, whether it streams or not. Timeouts: idle_timeout_s for the first byte of a request, read_timeout_s
// from there to the end of its body (a client dribbling a header line every few seconds is cut off), and
// write_timeout_s per write.
//
// Note [Shutting down]
// shutdown() closes the listening socket and every connection that is not in the middle of a request, and waits
// for the requests in flight (`answering`) to end, until the deadline. Then each remaining session ends its
// request itself: the loop is told to cancel it, a stream gets the error event and the end of its response, a
// whole request gets 503. Last, the I/O threads stop, and the sink gate closes so that the loop, which outlives
// the server, never posts into a destroyed io_context; sessions still alive then are abandoned (their requests
// cancelled).

namespace {

constexpr size_t kMaxBody = size_t(16) << 20;
constexpr unsigned kMaxHeader = 64u << 10;
constexpr const char* kJson = "application/json";
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
const std::string kShuttingDown = "[serve] the server is shutting down; retry on another instance";

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

// Closed (under mu) before the io_context goes away; the loop's sinks post only while it is open.
struct SinkGate {
  std::mutex mu;
  bool open = true;
};

// A completion request, parsed and tokenized on the parse pool: either an error response or what to submit.
enum class Endpoint { completions, chat };

struct Prepared {
  int error_status = 0;  // 0: no error
  std::string error_body;
  bool count_invalid = false;
  Endpoint endpoint = Endpoint::completions;
  std::vector<int32_t> prompt;
  inference::SamplingParams sampling;
  bool stream = false, include_usage = false, with_ids = false;
  bool echo = false;
  std::string echo_text;    // the prompt as the response repeats it
  int32_t choices = 1;      // returned: of sampling.n sequences, the best by mean log-probability (best_of)
  int32_t logprobs = -1;    // the listing the client asked for (sampling.logprobs may be raised to rank best_of)
};

class Session;

// The server's state, shared by the sessions (HttpServer::Impl is this under its public name).
struct Server {
  Server(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options)
      : loop(loop), tokenizer(tokenizer), options(std::move(options)), names(tokenizer) {
    std::random_device rd;
    id_prefix = fmt::format("{:08x}", rd());
    created = static_cast<int64_t>(std::time(nullptr));
  }

  inference::ServingLoop& loop;
  const data::BpeTokenizer* tokenizer;
  const ServerOptions options;
  const TokenNamer names;
  std::string id_prefix;  // per server, so completion ids differ across restarts
  int64_t created = 0;

  std::atomic<int64_t> rejected_queue_full{0};
  std::atomic<int64_t> rejected_invalid{0};
  std::atomic<int64_t> connections_refused{0};
  std::atomic<bool> draining{false};
  std::shared_ptr<SinkGate> gate = std::make_shared<SinkGate>();

  // Sessions and requests in flight, for shutdown; guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
  int answering = 0;
  bool hurry = false;

  std::mutex shutdown_mu;  // one shutdown at a time
  bool started = false, stopped = false;

  // Tokenizer copies for the parse pool (encode() is not const; copies share the tables).
  std::mutex tok_mu;
  std::vector<std::unique_ptr<data::BpeTokenizer>> tok_free;

  // Destroyed in reverse: the threads are joined first, then pending handlers (which hold sessions, whose
  // destructors use `mu` above) go with the io_context.
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::acceptor acceptor{asio::make_strand(ioc)};
  asio::steady_timer accept_retry{acceptor.get_executor()};
  std::optional<asio::thread_pool> parse_pool;
  std::vector<std::thread> threads;
  int bound_port = -1;

  std::vector<int32_t> encode(const std::string& text);
  Prepared prepare(const std::string& body, Endpoint endpoint);
  std::string metrics_text();
  nlohmann::ordered_json model_object() const;

  void accept();
  void refuse(tcp::socket socket);
  void remember(const std::shared_ptr<Session>& s);
  void forget(Session* s);
  void begin_answer();
  void end_answer();
  std::vector<std::shared_ptr<Session>> live_sessions();
  template <typename Pred>
  bool wait_until(Pred pred, std::chrono::steady_clock::time_point deadline);
  void finish();  // stops the threads; see Note [Shutting down]
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server& server, tcp::socket socket) : srv_(server), stream_(std::move(socket)) {}
  ~Session() { srv_.forget(this); }

  void start() {
    srv_.remember(shared_from_this());
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->wait_for_request(); });
  }
  // The rest run on the session's strand (abandon: after the I/O threads stopped).
  void drain() {
    if (state_ == State::idle || state_ == State::reading) close();
  }
  void expire();
  void abandon() {
    abort_request();
    self_keep_.reset();
  }
  beast::tcp_stream::executor_type executor() { return stream_.get_executor(); }

 private:
  enum class State { idle, reading, preparing, answering, closed };

  void wait_for_request();
  void read_header();
  void read_body();
  void read_failed(error_code ec);
  void route();
  void respond(http::status status, std::string body, const char* content_type = kJson, bool retry_after = false);
  void respond_error(int status, std::string_view message, std::string_view type = "invalid_request_error",
                     const std::optional<std::string>& param = std::nullopt,
                     const std::optional<std::string>& code = std::nullopt) {
    respond(static_cast<http::status>(status), error_body(message, type, param, code), kJson,
            status == 429 || status == 503);
  }
  void on_written(error_code ec);
  void start_completion(Endpoint endpoint);
  void on_prepared(Prepared p);
  void on_event(const GenerationEvent& ev);
  struct Choice;
  void stream_event(const GenerationEvent& ev, Choice& c);
  void respond_whole();

  // Streams: bytes are queued in out_ and written one batch at a time.
  void stream_head();
  void stream_send(std::string_view event);
  void stream_end();
  void flush();

  void watch_client();
  void end_answer();
  void abort_request();
  void close();
  void linger_close();
  void linger_read();

  Server& srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  State state_ = State::idle;
  bool keep_alive_ = false;
  bool counted_ = false;  // counted in srv_.answering
  bool expired_ = false;  // the shutdown deadline passed
  uint64_t watch_gen_ = 0;
  std::shared_ptr<Session> self_keep_;  // alive while the loop runs our request (its sink holds a weak pointer)

  // The request in flight.
  uint64_t uid_ = 0;  // the loop's uids start at 1
  bool request_done_ = false;
  bool streaming_ = false, include_usage_ = false, with_ids_ = false, chunked_ = false;
  Endpoint endpoint_ = Endpoint::completions;
  CompletionHeader header_;
  struct Choice {  // one sequence of the request
    std::string text;
    std::vector<int32_t> ids;
    std::vector<inference::TokenLogprob> lp;
    std::string finish;
    int32_t tokens = 0;
    double logprob_sum = 0;  // ranks best_of candidates
    int64_t text_offset = 0;  // completions' logprobs.text_offset, across a stream
    bool echoed = false;     // a stream has sent its echo of the prompt
  };
  std::vector<Choice> choices_;
  int32_t returned_ = 1;   // choices in the response (fewer than choices_ with best_of)
  int32_t logprobs_ = -1;  // the listing the client asked for
  bool echo_ = false;
  std::string echo_text_;
  int32_t first_prompt_token_ = 0, prompt_tokens_ = 0;
  std::vector<inference::TokenLogprob> prompt_lp_;

  std::string out_, inflight_;
  bool writing_ = false, stream_done_ = false;
};

void Session::wait_for_request() {
  if (state_ == State::closed) return;
  if (srv_.draining) return close();
  state_ = State::idle;
  parser_.emplace();
  parser_->body_limit(kMaxBody);
  parser_->header_limit(kMaxHeader);
  if (buffer_.size() > 0) return read_header();  // a pipelined request is already here
  stream_.expires_after(seconds(srv_.options.idle_timeout_s));
  stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](error_code ec, size_t n) {
    if (ec) return self->close();
    self->buffer_.commit(n);
    self->read_header();
  });
}

void Session::read_header() {
  if (state_ == State::closed) return;
  state_ = State::reading;
  stream_.expires_after(seconds(srv_.options.read_timeout_s));
  http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) {
    if (ec) return self->read_failed(ec);
    if (self->parser_->is_done()) return self->route();
    const auto expect = self->parser_->get()[http::field::expect];
    if (beast::iequals(expect, "100-continue")) {
      // curl waits a second for this before it sends a body over 1 KiB.
      asio::async_write(self->stream_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self](error_code wec, size_t) {
                          if (wec) return self->close();
                          self->read_body();
                        });
      return;
    }
    self->read_body();
  });
}

void Session::read_body() {
  // The deadline set before the header covers the body too.
  http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) {
    if (ec) return self->read_failed(ec);
    self->route();
  });
}

void Session::read_failed(error_code ec) {
  if (state_ == State::closed) return;
  keep_alive_ = false;
  if (ec == http::error::body_limit) {
    return respond_error(413, "[serve] the request body is larger than the server's limit of 16 MiB; send a "
                              "shorter prompt (token ids are about a third of the text's size)");
  }
  if (ec == http::error::header_limit) {
    return respond_error(431, "[serve] the request's headers are larger than the server's limit of 64 KiB");
  }
  if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
      ec != http::error::end_of_stream && ec != http::error::partial_message) {
    return respond_error(400, fmt::format("[serve] malformed HTTP request: {}", ec.message()));
  }
  close();  // the client left, or sent too slowly (timeout): nobody to answer
}

void Session::route() {
  request_ = parser_->release();
  parser_.reset();
  keep_alive_ = request_.keep_alive();
  state_ = State::answering;
  srv_.begin_answer();
  counted_ = true;
  const std::string_view target(request_.target().data(), request_.target().size());
  const std::string_view path = target.substr(0, target.find('?'));
  const http::verb method = request_.method();
  constexpr std::string_view kModels = "/v1/models/";
  try {
    if (method == http::verb::post && path == "/v1/completions") return start_completion(Endpoint::completions);
    if (method == http::verb::post && path == "/v1/chat/completions") return start_completion(Endpoint::chat);
    if (method == http::verb::get && path == "/health") {
      if (srv_.draining) return respond(http::status::service_unavailable, R"({"status":"shutting_down"})");
      return respond(http::status::ok, R"({"status":"ok"})");
    }
    if (method == http::verb::get && path == "/metrics") {
      return respond(http::status::ok, srv_.metrics_text(), "text/plain; version=0.0.4");
    }
    if (method == http::verb::get && path == "/v1/models") {
      nlohmann::ordered_json list;
      list["object"] = "list";
      list["data"] = nlohmann::ordered_json::array({srv_.model_object()});
      return respond(http::status::ok, list.dump());
    }
    if (method == http::verb::get && path.substr(0, kModels.size()) == kModels && path.size() > kModels.size()) {
      const std::string id(path.substr(kModels.size()));
      if (id != srv_.options.model_name) {
        return respond_error(404,
                             fmt::format("[serve] the model '{}' does not exist; this server serves '{}'",
                                         id.substr(0, 200), srv_.options.model_name),
                             "invalid_request_error", std::string("model"), std::string("model_not_found"));
      }
      return respond(http::status::ok, srv_.model_object().dump());
    }
    respond_error(404, fmt::format("[serve] no route for {} {}; this server answers POST /v1/completions, POST "
                                   "/v1/chat/completions, GET /v1/models, GET /v1/models/{{id}}, GET /health and GET /metrics",
                                   std::string_view(request_.method_string().data(), request_.method_string().size()),
                                   path.substr(0, 200)));
  } catch (const std::exception& e) {
    respond_error(500, fmt::format("[serve] internal error: {}", e.what()), "server_error");
  }
}

void Session::respond(http::status status, std::string body, const char* content_type, bool retry_after) {
  if (state_ == State::closed) return;
  auto res = std::make_shared<http::response<http::string_body>>(status, request_.version() ? request_.version() : 11);
  res->set(http::field::content_type, content_type);
  if (retry_after) res->set(http::field::retry_after, "1");
  res->keep_alive(keep_alive_ && !srv_.draining);
  keep_alive_ = res->keep_alive();
  res->body() = std::move(body);
  res->prepare_payload();
  stream_.expires_after(seconds(srv_.options.write_timeout_s));
  http::async_write(stream_, *res, [self = shared_from_this(), res](error_code ec, size_t) { self->on_written(ec); });
}

void Session::on_written(error_code ec) {
  end_answer();
  if (ec) return close();
  if (!keep_alive_ || srv_.draining) return linger_close();
  wait_for_request();
}

void Session::start_completion(Endpoint endpoint) {
  state_ = State::preparing;
  watch_client();
  auto self = shared_from_this();
  asio::post(*srv_.parse_pool, [self, endpoint, body = std::move(request_.body())] {
    Prepared p = self->srv_.prepare(body, endpoint);
    asio::post(self->stream_.get_executor(), [self, p = std::move(p)]() mutable { self->on_prepared(std::move(p)); });
  });
}

void Session::on_prepared(Prepared p) {
  if (state_ != State::preparing) return;  // closed meanwhile
  state_ = State::answering;
  if (p.error_status != 0) {
    if (p.count_invalid) ++srv_.rejected_invalid;
    return respond(static_cast<http::status>(p.error_status), std::move(p.error_body));
  }
  // A request read before a shutdown began still runs (until the deadline); only one past it is refused.
  if (expired_) return respond_error(503, kShuttingDown, "server_error");

  const int32_t sequences = p.sampling.n;
  const int32_t first_prompt_token = p.prompt.front();
  const auto prompt_tokens = static_cast<int32_t>(p.prompt.size());
  inference::GenerationRequest gr;
  gr.prompt = std::move(p.prompt);
  gr.sampling = std::move(p.sampling);
  gr.sink = [weak = std::weak_ptr<Session>(shared_from_this()), gate = srv_.gate](const GenerationEvent& ev) {
    const std::lock_guard<std::mutex> lock(gate->mu);
    if (!gate->open) return;
    if (auto s = weak.lock()) asio::post(s->stream_.get_executor(), [s, ev] { s->on_event(ev); });
  };
  const inference::SubmitResult sr = srv_.loop.submit(std::move(gr));
  switch (sr.status) {
    case inference::SubmitStatus::queue_full:
      ++srv_.rejected_queue_full;
      return respond_error(429, sr.error, "rate_limit_exceeded", std::nullopt, std::string("rate_limit_exceeded"));
    case inference::SubmitStatus::invalid:
      ++srv_.rejected_invalid;
      return respond_error(400, sr.error);
    case inference::SubmitStatus::stopping:
      return respond_error(503, sr.error, "server_error");
    case inference::SubmitStatus::accepted:
      break;
  }
  uid_ = sr.uid;
  request_done_ = false;
  self_keep_ = shared_from_this();
  endpoint_ = p.endpoint;
  const bool chat = endpoint_ == Endpoint::chat;
  header_ = CompletionHeader{fmt::format("{}-{}{:08x}", chat ? "chatcmpl" : "cmpl", srv_.id_prefix, sr.uid),
                             static_cast<int64_t>(std::time(nullptr)), srv_.options.model_name, chat};
  streaming_ = p.stream;
  include_usage_ = p.include_usage;
  with_ids_ = p.with_ids;
  logprobs_ = p.logprobs;
  echo_ = p.echo;
  echo_text_ = std::move(p.echo_text);
  first_prompt_token_ = first_prompt_token;
  prompt_tokens_ = prompt_tokens;
  choices_.assign(static_cast<size_t>(std::max(sequences, 1)), Choice{});
  returned_ = p.choices;
  prompt_lp_.clear();
  if (!streaming_) return;
  stream_head();
  if (!chat) return;
  for (int32_t i = 0; i < returned_; ++i) {
    stream_send(chat_stream_chunk(header_, i, "assistant", "", std::nullopt, include_usage_));
  }
}

void Session::on_event(const GenerationEvent& ev) {
  if (state_ != State::answering || ev.uid != uid_ || request_done_) return;
  const bool failed = ev.finish == FinishReason::error || ev.finish == FinishReason::cancelled;
  if (failed && !ev.request_done) srv_.loop.cancel(uid_);  // the request's other sequences end with this one
  if (failed || ev.request_done) {
    request_done_ = true;
    self_keep_.reset();
  }
  if (failed) {
    const std::string message = ev.finish == FinishReason::error
                                    ? ev.error
                                    : std::string("[serve] the request was cancelled: the server is stopping");
    if (!streaming_) return respond_error(ev.finish == FinishReason::error ? 500 : 503, message, "server_error");
    stream_send(stream_error_event(message, "server_error"));
    return stream_end();
  }
  if (ev.index < 0 || ev.index >= static_cast<int32_t>(choices_.size())) return;
  Choice& c = choices_[static_cast<size_t>(ev.index)];
  if (!ev.prompt_logprobs.empty()) prompt_lp_ = ev.prompt_logprobs;
  prompt_tokens_ = ev.prompt_tokens;
  c.tokens = ev.completion_tokens;
  for (const auto& e : ev.logprobs) c.logprob_sum += e.logprob;
  if (ev.finish != FinishReason::none) c.finish = inference::finish_reason_name(ev.finish);
  if (streaming_) {
    stream_event(ev, c);
  } else {
    c.text += ev.text;
    c.ids.insert(c.ids.end(), ev.tokens.begin(), ev.tokens.end());
    c.lp.insert(c.lp.end(), ev.logprobs.begin(), ev.logprobs.end());
  }
  if (!request_done_) return;
  int32_t generated = 0;
  for (const Choice& ch : choices_) generated += ch.tokens;
  if (!streaming_) return respond_whole();
  if (include_usage_) stream_send(stream_usage_chunk(header_, {prompt_tokens_, generated}));
  stream_send(kStreamDone);
  stream_end();
}

// The response of a finished request: its choices in order, or with best_of the best `returned_` of them by mean
// log-probability per token (OpenAI's rule), renumbered from 0. Usage counts every token generated.
void Session::respond_whole() {
  std::vector<size_t> order(choices_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  if (static_cast<int32_t>(choices_.size()) > returned_) {
    auto mean = [&](size_t i) { return choices_[i].logprob_sum / std::max(choices_[i].tokens, 1); };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return mean(a) > mean(b); });
    order.resize(static_cast<size_t>(returned_));
  }
  int32_t generated = 0;
  for (const Choice& ch : choices_) generated += ch.tokens;
  const CompletionUsage usage{prompt_tokens_, generated};
  std::vector<OJson> listings(order.size());
  std::vector<CompletionChoice> out(order.size());
  for (size_t k = 0; k < order.size(); ++k) {
    Choice& c = choices_[order[k]];
    out[k].finish_reason = c.finish;
    if (endpoint_ == Endpoint::chat) {
      out[k].text = c.text;
      if (logprobs_ >= 0) listings[k] = chat_logprobs(c.lp, srv_.names);
    } else {
      out[k].text = echo_ ? echo_text_ + c.text : c.text;
      if (with_ids_) out[k].token_ids = &c.ids;
      if (logprobs_ >= 0) {
        std::vector<inference::TokenLogprob> all = echo_ ? prompt_lp_ : std::vector<inference::TokenLogprob>();
        all.insert(all.end(), c.lp.begin(), c.lp.end());
        int64_t offset = 0;
        listings[k] = completion_logprobs(all, srv_.names, offset,
                                          echo_ ? std::optional<int32_t>(first_prompt_token_) : std::nullopt);
      }
    }
    if (logprobs_ >= 0) out[k].logprobs = &listings[k];
  }
  respond(http::status::ok, endpoint_ == Endpoint::chat ? chat_response(header_, out, usage)
                                                        : completion_response(header_, out, usage));
}

void Session::stream_event(const GenerationEvent& ev, Choice& c) {
  const int32_t i = ev.index;
  const bool last = ev.finish != FinishReason::none;
  std::optional<std::string_view> reason;
  if (last) reason = c.finish;
  const bool listed = logprobs_ >= 0 && !ev.logprobs.empty();
  if (endpoint_ == Endpoint::chat) {
    if (!ev.text.empty() || listed) {
      const OJson lp = chat_logprobs(ev.logprobs, srv_.names);
      stream_send(chat_stream_chunk(header_, i, std::nullopt, ev.text, std::nullopt, include_usage_,
                                    listed ? &lp : nullptr));
    }
    if (last) stream_send(chat_stream_chunk(header_, i, std::nullopt, std::nullopt, reason, include_usage_));
    return;
  }
  if (echo_ && !c.echoed) {  // the prompt first, scored when asked (its first token has no log-probability)
    c.echoed = true;
    const OJson lp = logprobs_ >= 0 ? completion_logprobs(prompt_lp_, srv_.names, c.text_offset, first_prompt_token_)
                                    : OJson();
    stream_send(stream_chunk(header_, i, echo_text_, std::nullopt, nullptr, include_usage_,
                             logprobs_ >= 0 ? &lp : nullptr));
  }
  if (!ev.text.empty() || (with_ids_ && !ev.tokens.empty()) || last || listed) {
    const OJson lp = listed ? completion_logprobs(ev.logprobs, srv_.names, c.text_offset) : OJson();
    stream_send(stream_chunk(header_, i, ev.text, reason, with_ids_ ? &ev.tokens : nullptr, include_usage_,
                             listed ? &lp : nullptr));
  }
}

void Session::stream_head() {
  // HTTP/1.0 has no chunked encoding: the end of the stream is the end of the connection.
  chunked_ = request_.version() >= 11;
  if (!chunked_) keep_alive_ = false;
  out_ = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
  out_ += chunked_ ? "Transfer-Encoding: chunked\r\n" : "";
  out_ += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  stream_done_ = false;
  flush();
}

void Session::stream_send(std::string_view event) {
  if (chunked_) out_ += fmt::format("{:x}\r\n", event.size());
  out_.append(event);
  if (chunked_) out_ += "\r\n";
  flush();
}

void Session::stream_end() {
  self_keep_.reset();
  if (chunked_) out_ += "0\r\n\r\n";
  stream_done_ = true;
  flush();
}

void Session::flush() {
  if (writing_ || state_ != State::answering) return;
  if (out_.empty()) {
    if (!stream_done_) return;
    end_answer();
    if (!keep_alive_ || srv_.draining) return linger_close();
    return wait_for_request();
  }
  writing_ = true;
  inflight_.swap(out_);
  out_.clear();
  stream_.expires_after(seconds(srv_.options.write_timeout_s));
  asio::async_write(stream_, asio::buffer(inflight_), [self = shared_from_this()](error_code ec, size_t) {
    self->writing_ = false;
    self->inflight_.clear();
    if (ec) return self->close();  // the client left or stopped reading; close() cancels its request
    self->flush();
  });
}

void Session::watch_client() {
  const uint64_t gen = ++watch_gen_;
  stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(), gen](error_code ec) {
    if (ec || gen != self->watch_gen_ || self->state_ == State::closed || !self->counted_) return;
    char c = 0;
    const ssize_t n = ::recv(self->stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return;  // a pipelined request: the client is there; it is read once this response ends
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return self->watch_client();
    self->close();  // hang-up or reset: the request is cancelled
  });
}

void Session::end_answer() {
  if (counted_) {
    counted_ = false;
    srv_.end_answer();
  }
  ++watch_gen_;
  error_code ignored;
  stream_.socket().cancel(ignored);  // the client watch; no read or write is pending here
  uid_ = 0;
  request_done_ = false;
  stream_done_ = false;
  self_keep_.reset();
}

void Session::abort_request() {
  if (uid_ != 0 && !request_done_) srv_.loop.cancel(uid_);
  request_done_ = true;
}

void Session::expire() {
  expired_ = true;
  if (state_ != State::answering || uid_ == 0 || request_done_) return;
  abort_request();
  self_keep_.reset();
  if (streaming_) {
    stream_send(stream_error_event(kShuttingDown, "server_error"));
    return stream_end();
  }
  respond_error(503, kShuttingDown, "server_error");
}

void Session::close() {
  if (state_ == State::closed) return;
  abort_request();
  if (counted_) {
    counted_ = false;
    srv_.end_answer();
  }
  state_ = State::closed;
  self_keep_.reset();
  error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream_.close();
}

// After a response that ends the connection: half-close, then read (and drop) whatever the client still sends
// for a moment before closing. Closing with unread bytes in the receive buffer sends a reset, which can destroy
// the response before the client has read it.
void Session::linger_close() {
  if (state_ == State::closed) return;
  state_ = State::closed;
  self_keep_.reset();
  error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream_.expires_after(std::chrono::seconds(1));
  linger_read();
}

void Session::linger_read() {
  buffer_.clear();
  stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](error_code ec, size_t) {
    if (ec) return self->stream_.close();
    self->linger_read();
  });
}

// ---------------------------------------------------------------------------------------------------------------

std::vector<int32_t> Server::encode(const std::string& text) {
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

Prepared Server::prepare(const std::string& body, Endpoint endpoint) {
  Prepared p;
  p.endpoint = endpoint;
  try {
    if (endpoint == Endpoint::chat) {
      ChatRequest cr = parse_chat_request(body, options.model_name);
      if (!tokenizer) {
        throw ApiError(400, "[serve] this server has no tokenizer, so it cannot read chat messages; use "
                            "/v1/completions with token ids",
                       std::string("messages"));
      }
      p.sampling = std::move(cr.sampling);
      const ChatFormat* chat = options.chat.get();
      if (chat && chat->jinja) {
        ChatTemplateInput in{std::move(cr.messages), true, chat->bos_token, chat->eos_token};
        std::string text;
        try {
          text = chat->jinja->render(in);
        } catch (const ConfigError& e) {  // the template's own fault, not the request's
          throw ApiError(500, fmt::format("[serve] the chat template ({}) failed on these messages: {}", chat->origin,
                                          e.what()),
                         std::nullopt, "server_error");
        }
        p.prompt = text.empty() ? std::vector<int32_t>{tokenizer->eot_token()} : encode(text);
        if (!chat->eos_token.empty()) p.sampling.stop.push_back(chat->eos_token);
      } else {
        p.prompt = encode(chatml_prompt(cr.messages));
        p.sampling.stop.emplace_back(kChatEnd);
      }
      if (p.sampling.max_tokens < 0) {  // not given: the rest of the context, as OpenAI
        const int64_t room = int64_t{loop.engine().max_context()} - static_cast<int64_t>(p.prompt.size());
        if (room < 1) {
          throw ApiError(400, fmt::format("[serve] the messages take {} tokens, the whole context of {} tokens, and "
                                          "leave no room for a reply; send shorter messages",
                                          p.prompt.size(), loop.engine().max_context()),
                         std::string("messages"));
        }
        p.sampling.max_tokens = static_cast<int32_t>(room);
      }
      p.stream = cr.stream;
      p.include_usage = cr.include_usage;
      p.choices = p.sampling.n;
      p.logprobs = p.sampling.logprobs;
      return p;
    }
    CompletionRequest cr = parse_completion_request(body, options.model_name);
    if (cr.prompt_text) {
      if (!tokenizer) {
        throw ApiError(400, "[serve] this server has no tokenizer, so it cannot take a text prompt; send the "
                            "prompt as an array of token ids",
                       std::string("prompt"));
      }
      // An empty text prompt is conditioned on the end-of-text token, as OpenAI does.
      p.prompt = cr.prompt_text->empty() ? std::vector<int32_t>{tokenizer->eot_token()} : encode(*cr.prompt_text);
      p.echo_text = *cr.prompt_text;
    } else {
      p.prompt = std::move(cr.prompt_ids);
      if (tokenizer && cr.echo) p.echo_text = tokenizer->decode(p.prompt);
    }
    if (!tokenizer && !cr.sampling.stop.empty()) {
      throw ApiError(400, "[serve] this server has no tokenizer, so it cannot match stop strings; use "
                          "'stop_token_ids' instead",
                     std::string("stop"));
    }
    p.sampling = std::move(cr.sampling);
    p.stream = cr.stream;
    p.include_usage = cr.include_usage;
    p.with_ids = cr.prompt_is_ids();
    p.choices = cr.n;
    p.logprobs = p.sampling.logprobs;
    // best_of ranks its candidates by their log-probabilities, listed or not.
    if (p.sampling.n > p.choices) p.sampling.logprobs = std::max(p.sampling.logprobs, 0);
    p.echo = cr.echo;
    if (!p.echo) p.echo_text.clear();
  } catch (const ApiError& e) {
    p.error_status = e.status();
    p.error_body = error_body(e);
    p.count_invalid = true;
  } catch (const Error& e) {
    p.error_status = 400;
    p.error_body = error_body(e.what(), "invalid_request_error");
    p.count_invalid = true;
  } catch (const std::exception& e) {
    p.error_status = 500;
    p.error_body = error_body(fmt::format("[serve] internal error: {}", e.what()), "server_error");
  }
  return p;
}

std::string Server::metrics_text() {
  HttpCounters http;
  http.rejected_queue_full = rejected_queue_full.load();
  http.rejected_invalid = rejected_invalid.load();
  http.connections_refused = connections_refused.load();
  {
    const std::lock_guard<std::mutex> lock(mu);
    http.connections_open = static_cast<int64_t>(sessions.size());
  }
  return render_metrics(loop.stats(), http);
}

nlohmann::ordered_json Server::model_object() const {
  nlohmann::ordered_json model;
  model["id"] = options.model_name;
  model["object"] = "model";
  model["created"] = created;
  model["owned_by"] = "dspeed";
  model["max_model_len"] = loop.engine().max_context();
  return model;
}

void Server::accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // Out of file descriptors, most likely: try again shortly rather than spin.
      log_warning("[serve] accepting a connection failed: {}", ec.message());
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](error_code wec) {
        if (!wec) accept();
      });
      return;
    }
    size_t open = 0;
    {
      const std::lock_guard<std::mutex> lock(mu);
      open = sessions.size();
    }
    // Token events are small writes in quick succession: Nagle's algorithm would hold each behind the previous
    // one's acknowledgement.
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (open >= static_cast<size_t>(options.max_connections)) {
      refuse(std::move(socket));
    } else {
      std::make_shared<Session>(*this, std::move(socket))->start();
    }
    accept();
  });
}

void Server::refuse(tcp::socket socket) {
  ++connections_refused;
  const std::string body = error_body(
      fmt::format("[serve] the server has {} connections open, its limit; retry later", options.max_connections),
      "server_error");
  auto msg = std::make_shared<std::string>(fmt::format(
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: "
      "close\r\nContent-Length: {}\r\n\r\n{}",
      body.size(), body));
  auto sock = std::make_shared<tcp::socket>(std::move(socket));
  asio::async_write(*sock, asio::buffer(*msg), [sock, msg](error_code, size_t) {
    error_code ignored;
    sock->shutdown(tcp::socket::shutdown_both, ignored);
    sock->close(ignored);
  });
}

void Server::remember(const std::shared_ptr<Session>& s) {
  const std::lock_guard<std::mutex> lock(mu);
  sessions.emplace(s.get(), s);
}

void Server::forget(Session* s) {
  {
    const std::lock_guard<std::mutex> lock(mu);
    sessions.erase(s);
  }
  cv.notify_all();
}

void Server::begin_answer() {
  const std::lock_guard<std::mutex> lock(mu);
  ++answering;
}

void Server::end_answer() {
  {
    const std::lock_guard<std::mutex> lock(mu);
    --answering;
  }
  cv.notify_all();
}

std::vector<std::shared_ptr<Session>> Server::live_sessions() {
  std::vector<std::shared_ptr<Session>> out;
  const std::lock_guard<std::mutex> lock(mu);
  for (const auto& [ptr, weak] : sessions) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  return out;
}

template <typename Pred>
bool Server::wait_until(Pred pred, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu);
  return cv.wait_until(lock, deadline, [&] { return pred() || hurry; }) && pred();
}

void Server::finish() {
  work.reset();
  ioc.stop();
  for (std::thread& t : threads) t.join();
  threads.clear();
  parse_pool->join();  // its last tasks post to strands that no longer run: nothing is submitted after this
  {
    const std::lock_guard<std::mutex> lock(gate->mu);
    gate->open = false;
  }
  for (const auto& s : live_sessions()) s->abandon();
}

}  // namespace

struct HttpServer::Impl : Server {
  using Server::Server;
};

// ---------------------------------------------------------------------------------------------------------------

HttpServer::HttpServer(inference::ServingLoop& loop, const data::BpeTokenizer* tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(loop, tokenizer, std::move(options))) {
  const ServerOptions& o = impl_->options;
  DS_CHECK_AS(ConfigError, o.io_threads > 0 && o.parse_threads > 0,
              "[serve] io_threads and parse_threads must be at least 1, got {} and {}", o.io_threads,
              o.parse_threads);
  DS_CHECK_AS(ConfigError, o.max_connections > 0, "[serve] max_connections must be at least 1, got {}",
              o.max_connections);
  DS_CHECK_AS(ConfigError, o.port >= 0 && o.port <= 65535,
              "[serve] the port must be in [0, 65535] (0: any free port), got {}", o.port);
  DS_CHECK_AS(ConfigError,
              o.idle_timeout_s > 0 && o.read_timeout_s > 0 && o.write_timeout_s > 0 && o.shutdown_timeout_s >= 0,
              "[serve] the idle, read and write timeouts must be positive and the shutdown timeout not negative, "
              "got {}, {}, {} and {} s",
              o.idle_timeout_s, o.read_timeout_s, o.write_timeout_s, o.shutdown_timeout_s);
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
  DS_CHECK(!im.started, "[serve] the HTTP server was started twice; create a new HttpServer to serve again");
  const std::string& host = im.options.host;
  auto cannot_listen = [&](const error_code& ec) {
    return IoError(fmt::format("[serve] cannot listen on {}:{} ({}): the port is in use or the address is not one "
                               "of this machine's; choose another --port (or --host)",
                               host, im.options.port, ec.message()));
  };
  error_code ec;
  tcp::resolver resolver(im.ioc);
  const auto endpoints = resolver.resolve(host, std::to_string(im.options.port),
                                          tcp::resolver::numeric_service | tcp::resolver::passive, ec);
  if (ec || endpoints.empty()) throw cannot_listen(ec);
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  // SO_REUSEADDR allows a restart while old connections sit in TIME_WAIT; unlike SO_REUSEPORT it does not let a
  // second server bind a port in use.
  if (im.acceptor.open(endpoint.protocol(), ec) || im.acceptor.set_option(tcp::acceptor::reuse_address(true), ec) ||
      im.acceptor.bind(endpoint, ec) || im.acceptor.listen(SOMAXCONN, ec)) {
    error_code ignored;
    im.acceptor.close(ignored);
    throw cannot_listen(ec);
  }
  im.bound_port = im.acceptor.local_endpoint().port();
  im.started = true;
  im.work.emplace(im.ioc.get_executor());
  im.parse_pool.emplace(static_cast<size_t>(im.options.parse_threads));
  asio::post(im.acceptor.get_executor(), [&im] { im.accept(); });
  for (int i = 0; i < im.options.io_threads; ++i) {
    im.threads.emplace_back([&im] {
      while (true) {
        try {
          im.ioc.run();
          return;
        } catch (const std::exception& e) {
          log_warning("[serve] an HTTP handler failed: {}", e.what());
        }
      }
    });
  }
}

void HttpServer::shutdown() {
  Impl& im = *impl_;
  {
    const std::lock_guard<std::mutex> lock(im.mu);
    if (im.draining) im.hurry = true;  // a second call: no more waiting
  }
  im.cv.notify_all();
  const std::lock_guard<std::mutex> once(im.shutdown_mu);
  if (!im.started || im.stopped) return;
  const auto deadline = std::chrono::steady_clock::now() + seconds(im.options.shutdown_timeout_s);
  im.draining = true;
  asio::post(im.acceptor.get_executor(), [&im] {
    error_code ignored;
    im.acceptor.close(ignored);
    im.accept_retry.cancel();
  });
  for (const auto& s : im.live_sessions()) asio::post(s->executor(), [s] { s->drain(); });
  if (!im.wait_until([&] { return im.answering == 0; }, deadline)) {
    for (const auto& s : im.live_sessions()) asio::post(s->executor(), [s] { s->expire(); });
  }
  // The last bytes (an error event, a 503) and the lingering closes take a moment; a client that reads nothing
  // does not hold the shutdown up for longer than this.
  {
    std::unique_lock<std::mutex> lock(im.mu);
    im.cv.wait_for(lock, std::chrono::seconds(2), [&] { return im.sessions.empty(); });
  }
  im.finish();
  im.stopped = true;
}

void HttpServer::hurry() {
  Impl& im = *impl_;
  {
    const std::lock_guard<std::mutex> lock(im.mu);
    im.hurry = true;
  }
  im.cv.notify_all();
}

void HttpServer::stop() {
  hurry();
  shutdown();
}

int HttpServer::port() const { return impl_->bound_port; }

}  // namespace ds::serve
