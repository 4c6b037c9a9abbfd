// Writes the exposition by hand: a dozen families do not justify a client library. Numbers use fmt's shortest
// round-trip form, so a bucket bound reads "0.0025", not "0.002500".
#include "ds/serve/metrics.h"

#include <fmt/core.h>

namespace ds::serve {

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, const char* name, int64_t value, const char* help, const char* type) {
  family(out, name, type, help);
  out += fmt::format("{} {}\n", name, value);
}

void histogram(std::string& out, const char* name, const Histogram& h, const char* help) {
  family(out, name, "histogram", help);
  int64_t cumulative = 0;
  const auto& bounds = h.upper_bounds();
  const auto& counts = h.counts();
  for (size_t i = 0; i < bounds.size(); ++i) {
    cumulative += counts[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, h.count());
  out += fmt::format("{}_sum {}\n", name, h.sum());
  out += fmt::format("{}_count {}\n", name, h.count());
}

}  // namespace

std::string render_metrics(const inference::LoopStats& s, const HttpCounters& http) {
  std::string out;
  out.reserve(4096);
  sample(out, "dspeed_requests_total", s.requests_accepted, "Requests accepted by the serving loop.", "counter");
  family(out, "dspeed_requests_rejected_total", "counter",
         "Requests refused: queue_full (answered 429) or invalid (answered 400/404).");
  out += fmt::format("dspeed_requests_rejected_total{{reason=\"queue_full\"}} {}\n", http.rejected_queue_full);
  out += fmt::format("dspeed_requests_rejected_total{{reason=\"invalid\"}} {}\n", http.rejected_invalid);
  sample(out, "dspeed_requests_finished_total", s.requests_finished,
         "Requests that finished (stop, length or error), cancelled ones excluded.", "counter");
  sample(out, "dspeed_requests_cancelled_total", s.requests_cancelled,
         "Requests cancelled before they finished (client gone, server stopping).", "counter");
  sample(out, "dspeed_prompt_tokens_total", s.prompt_tokens, "Prompt tokens of accepted requests.", "counter");
  sample(out, "dspeed_generation_tokens_total", s.completion_tokens, "Tokens generated.", "counter");
  sample(out, "dspeed_queue_depth", s.waiting, "Requests accepted that have not produced a token yet.", "gauge");
  sample(out, "dspeed_running_sequences", s.running, "Requests generating.", "gauge");
  sample(out, "dspeed_kv_blocks_used", s.kv_blocks_used, "KV-cache blocks held by sequences.", "gauge");
  sample(out, "dspeed_kv_blocks_free", s.kv_blocks_free, "KV-cache blocks free.", "gauge");
  sample(out, "dspeed_preemptions_total", s.preemptions, "Requests preempted (KV flushed, recomputed later).",
         "counter");
  sample(out, "dspeed_forward_passes_total", s.passes, "Ragged forward passes run.", "counter");
  sample(out, "dspeed_forward_pass_tokens_total", s.pass_tokens, "Tokens run through forward passes.", "counter");
  sample(out, "dspeed_http_connections", http.connections_open, "HTTP connections open.", "gauge");
  sample(out, "dspeed_http_connections_refused_total", http.connections_refused,
         "HTTP connections refused with 503 because the connection limit was reached.", "counter");
  histogram(out, "dspeed_time_to_first_token_seconds", s.time_to_first_token_s,
            "Seconds from a request's arrival to its first generated token.");
  histogram(out, "dspeed_time_per_output_token_seconds", s.time_per_output_token_s,
            "Seconds between consecutive generated tokens of a request.");
  return out;
}

}  // namespace ds::serve
