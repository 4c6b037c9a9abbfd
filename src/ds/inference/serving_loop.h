// The serving loop: requests in, tokens out, one scheduled ragged pass at a time (DeepSpeed-MII's
// RaggedBatchBase.generate). Each step asks the scheduler for a plan, reserves the KV blocks, runs the engine,
// samples a token for every sequence whose prompt is done, feeds it back as that request's next input, and hands
// the news to the request's sink. Requests arrive from any thread (submit, cancel); the loop runs on one thread,
// its own after start() or the caller's through step(). A cancelled request (a client that went away) is flushed
// before the next pass, so its blocks return to the pool at once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ds/core/histogram.h"
#include "ds/inference/engine.h"
#include "ds/inference/sampler.h"
#include "ds/inference/scheduler.h"

namespace ds::data {
class BpeTokenizer;
}

namespace ds::inference {

enum class FinishReason { none, stop, length, cancelled, error };
// OpenAI's names: "stop", "length"; ours for the rest: "cancelled", "error"; none is "".
const char* finish_reason_name(FinishReason r);

struct GenerationEvent {
  uint64_t uid = 0;
  std::vector<int32_t> tokens;  // tokens sampled in this pass (stop strings' tokens included)
  std::string text;             // text that became final in this pass (empty without a tokenizer)
  FinishReason finish = FinishReason::none;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // so far
  std::string error;              // with FinishReason::error
  std::vector<TokenLogprob> logprobs;         // one per entry of tokens, when the request asked (logprobs >= 0)
  std::vector<TokenLogprob> prompt_logprobs;  // prompt tokens 1.. (prompt_logprobs), once, with the first event
  int32_t index = 0;          // which of the request's sequences (sampling.n of them) this is about
  bool request_done = false;  // with the finish of its last open sequence: nothing more comes for the request
};
// Called once per pass that brings news for a sequence of the request, each sequence's last with finish != none,
// the request's very last with request_done; on the loop's thread, except for the cancellations that stop() and
// the destructor deliver on theirs. Must not block.
using EventSink = std::function<void(const GenerationEvent&)>;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  EventSink sink;
};

struct LoopOptions {
  int32_t max_pending = 256;    // requests queued or running; submit refuses more
  std::optional<uint64_t> seed;  // base of the seeds of requests that give none (default: from random_device)
  int threads = 0;              // OpenMP threads of the passes run by start()'s thread (0: OpenMP's default)
};

enum class SubmitStatus { accepted, queue_full, invalid, stopping };
struct SubmitResult {
  SubmitStatus status = SubmitStatus::invalid;
  uint64_t uid = 0;
  std::string error;  // why, for queue_full, invalid and stopping
};

struct LoopStats {
  int64_t requests_accepted = 0, requests_rejected = 0, requests_finished = 0, requests_cancelled = 0;
  int64_t preemptions = 0, passes = 0, pass_tokens = 0;
  double forward_seconds = 0;  // in the engine's forward passes
  double busy_seconds = 0;     // in steps that ran a pass or preempted: scheduling, forward, sampling, delivery
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int32_t waiting = 0;  // accepted, no token out yet
  int32_t running = 0;  // generating
  int32_t kv_blocks_used = 0, kv_blocks_free = 0;
  Histogram time_to_first_token_s = Histogram::latency_seconds();
  Histogram time_per_output_token_s = Histogram::latency_seconds();
};

class ServingLoop {
 public:
  // tokenizer may be null (token ids in and out only). The engine must outlive the loop.
  ServingLoop(InferenceEngine& engine, std::unique_ptr<Scheduler> scheduler, const data::BpeTokenizer* tokenizer,
              LoopOptions options = {});
  ~ServingLoop();  // stops the thread; requests still open get FinishReason::cancelled
  ServingLoop(const ServingLoop&) = delete;
  ServingLoop& operator=(const ServingLoop&) = delete;

  // Thread-safe. invalid: an empty prompt, a token id outside the vocabulary, prompt + max_tokens longer than the
  // model's context, or bad sampling parameters (error says which). queue_full: max_pending reached.
  SubmitResult submit(GenerationRequest request);
  // Thread-safe; the request ends with FinishReason::cancelled before the next pass. Unknown uids are ignored.
  void cancel(uint64_t uid);

  // One pass on the calling thread; false when there was nothing to run. Not to be mixed with start().
  bool step();
  // Steps until every request has finished.
  void run_until_idle();
  void start();  // runs the loop on a thread of its own until stop()
  void stop();

  LoopStats stats() const;  // thread-safe snapshot
  const InferenceEngine& engine() const { return engine_; }
  Policy policy() const { return scheduler_->policy(); }

 private:
  struct Active;
  struct Group;
  void admit_new();
  void finish(Active& a, FinishReason reason, GenerationEvent& ev);
  void preempt(uint64_t uid);
  // The request's other sequences, once its first has run the prompt (sharing its KV when the engine can fork).
  std::vector<Active*> fork_siblings(Active& first);
  void deliver(Active& a, int32_t token, TokenLogprob logprob, std::chrono::steady_clock::time_point now);

  InferenceEngine& engine_;
  std::unique_ptr<Scheduler> scheduler_;
  const data::BpeTokenizer* tokenizer_;
  LoopOptions options_;
  uint64_t seed_base_;
  int32_t sample_vocab_;  // logits the sampler sees: the tokenizer's ids when it has fewer than the model

  mutable std::mutex mu_;  // guards incoming_, cancels_, stats_, pending_count_
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Active>> incoming_;
  std::unordered_set<uint64_t> cancels_;
  LoopStats stats_;
  int32_t pending_count_ = 0;
  uint64_t next_uid_ = 1;

  std::vector<std::unique_ptr<Active>> active_;  // loop thread only, arrival order
  std::vector<QueuedRequest> queue_view_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

}  // namespace ds::inference
