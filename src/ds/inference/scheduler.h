// Scheduling policies: which tokens of which requests go into the next ragged forward pass (DESIGN decision 11).
// A policy sees the queue (every unfinished request, in arrival order) and the KV state, and returns a plan; it
// changes neither (static remembers only which requests form its running batch), so it can be tested on recorded
// traces with no model. The serving loop applies the plan
// (reserves KV, runs the forward, samples) and, when the plan says so, preempts a request by recompute: its KV is
// flushed and it re-enters the queue as a prompt of its prompt plus the tokens generated so far.
//   splitfuse      Dynamic SplitFuse as DeepSpeed-MII implements it (ragged_batching.py::RaggedBatchBase):
//                  decodes first, one token each; then prompts in arrival order, each admitted only when the cache
//                  can hold all of its remaining tokens, packed until the token budget is full, the last one split
//                  to fill it exactly; when nothing at all can run, the last request holding KV is preempted.
//   prefill_first  continuous batching with whole prompts first, as vLLM's original scheduler: a pass of whole
//                  waiting prompts (packed up to the budget) whenever one fits, leaving a block for every decode
//                  whose last block is full, otherwise a pass of every decode; a decode that needs a block when
//                  none is free preempts the newest running request.
//   static         static batching: a batch of up to static_batch_size requests is formed only when the last one
//                  has finished (each with KV for all of its prompt and max_tokens), prefilled in passes of the
//                  token budget, then decoded in lockstep until its last member finishes; arrivals wait for the
//                  next batch (Note [Static batches] in scheduler.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ds/inference/kv_cache.h"

namespace ds::inference {

enum class Policy { splitfuse, prefill_first, static_batch };
// "splitfuse", "prefill-first", "static"; ConfigError listing the names otherwise.
Policy parse_policy(const std::string& name);
const char* policy_name(Policy p);

struct SchedulerLimits {
  int32_t token_budget = 768;        // tokens per forward pass (DeepSpeed's max_ragged_batch_size)
  int32_t max_sequences = 512;       // sequences per forward pass (max_ragged_sequence_count)
  int32_t static_batch_size = 16;    // requests per batch of the static policy
};

// The policy's view of one unfinished request.
struct QueuedRequest {
  uint64_t uid = 0;
  int32_t pending = 0;         // tokens waiting to run: the rest of the prompt, or 1 (the last sampled token)
  bool decoding = false;       // the prompt is done and the request has sampled a token (it holds KV; pending 1)
  int32_t max_new_tokens = 0;  // tokens it may still generate (the static policy reserves KV for them)
};

// Run the first `tokens` of uid's pending tokens. The pass samples a token for uid only when tokens == pending
// (the last chunk of a prompt, or a decode); a shorter chunk is a split prompt and samples nothing.
struct Chunk {
  uint64_t uid = 0;
  int32_t tokens = 0;
};

struct Plan {
  std::vector<Chunk> chunks;       // in this order in the ragged batch
  std::optional<uint64_t> preempt; // flush this request and re-queue it as a prompt (chunks is empty then)
  bool empty() const { return chunks.empty() && !preempt; }
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // queue: every unfinished request in arrival order (a request keeps its place while it runs or is preempted).
  // kv: the cache as it is before the pass. The plan never exceeds limits.token_budget tokens (prefill_first may
  // exceed it with a single prompt longer than the budget, which it could never run otherwise),
  // limits.max_sequences sequences, the free KV blocks, or the sequences kv may still track.
  virtual Plan plan(std::span<const QueuedRequest> queue, const KvStateManager& kv) = 0;
  virtual Policy policy() const = 0;
  const SchedulerLimits& limits() const { return limits_; }

 protected:
  explicit Scheduler(const SchedulerLimits& limits) : limits_(limits) {}
  SchedulerLimits limits_;
};

std::unique_ptr<Scheduler> make_scheduler(Policy policy, const SchedulerLimits& limits);

}  // namespace ds::inference
