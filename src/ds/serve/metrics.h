// Prometheus text exposition (format 0.0.4) of a serving loop's statistics and the HTTP front end's own counters,
// for GET /metrics. Names carry the dspeed_ prefix and Prometheus' unit suffixes (_total, _seconds). The loop's
// histograms store a count per bucket; the exposition wants cumulative counts, so they are summed here, and the
// +Inf bucket is the total count by construction.
#pragma once

#include <cstdint>
#include <string>

#include "ds/inference/serving_loop.h"

namespace ds::serve {

// What only the HTTP layer sees: requests refused before (or by) ServingLoop::submit.
struct HttpCounters {
  int64_t rejected_queue_full = 0;  // answered 429
  int64_t rejected_invalid = 0;     // answered 400/404 on /v1/completions (bad body, or the loop refused it)
  int64_t connections_open = 0;     // HTTP connections held now
  int64_t connections_refused = 0;  // connections answered 503 at once: max_connections were open
};

std::string render_metrics(const inference::LoopStats& stats, const HttpCounters& http);

}  // namespace ds::serve
