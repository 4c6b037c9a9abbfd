// The three scheduling policies of scheduler.h. Each plan() is a pure function of the queue and the KV state: a
// PassBuilder counts what is left of the pass (tokens, sequences, free blocks, tracked-sequence slots) so the
// plan the serving loop applies can never fail to reserve. Where a policy departs from its model and why: Note
// [SplitFuse as implemented here] (MII), Note [Prefill-first keeps the decodes' next blocks] (vLLM v0), and Note
// [Static batches never run out of blocks].
#include "ds/inference/scheduler.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "ds/core/error.h"

namespace ds::inference {

Policy parse_policy(const std::string& name) {
  if (name == "splitfuse") return Policy::splitfuse;
  if (name == "prefill-first") return Policy::prefill_first;
  if (name == "static") return Policy::static_batch;
  DS_THROW(ConfigError, "[scheduler] unknown scheduling policy '{}'; use one of: splitfuse, prefill-first, static",
           name);
}

const char* policy_name(Policy p) {
  switch (p) {
    case Policy::splitfuse: return "splitfuse";
    case Policy::prefill_first: return "prefill-first";
    case Policy::static_batch: return "static";
  }
  DS_ASSERT(false, "unknown Policy value {}", static_cast<int>(p));
  return "";
}

namespace {

// The serving loop's side of the contract (a broken one is our bug, not the user's).
void check_queue(std::span<const QueuedRequest> queue, const KvStateManager& kv) {
  std::unordered_set<uint64_t> seen;
  for (const QueuedRequest& r : queue) {
    DS_ASSERT(seen.insert(r.uid).second, "request {} is queued twice", r.uid);
    DS_ASSERT(r.pending >= 1, "request {} is queued with {} pending tokens", r.uid, r.pending);
    DS_ASSERT(!r.decoding || (r.pending == 1 && kv.find(r.uid) != nullptr),
              "decoding request {} must have 1 pending token and hold KV (pending {})", r.uid, r.pending);
  }
}

// The last request in queue order that holds KV and satisfies pred; nullopt when there is none.
template <class Pred>
std::optional<uint64_t> last_kv_holder(std::span<const QueuedRequest> queue, const KvStateManager& kv, Pred pred) {
  for (auto it = queue.rbegin(); it != queue.rend(); ++it)
    if (kv.find(it->uid) != nullptr && pred(*it)) return it->uid;
  return std::nullopt;
}

std::optional<uint64_t> last_kv_holder(std::span<const QueuedRequest> queue, const KvStateManager& kv) {
  return last_kv_holder(queue, kv, [](const QueuedRequest&) { return true; });
}

// One pass being filled: the chunks so far and what they leave of the limits.
class PassBuilder {
 public:
  PassBuilder(const SchedulerLimits& limits, const KvStateManager& kv)
      : limits_(limits), kv_(kv), free_left_(kv.free_blocks()),
        track_left_(kv.max_tracked_sequences() - kv.tracked_sequences()) {}

  int32_t tokens_left() const { return limits_.token_budget - tokens_; }
  int32_t free_left() const { return free_left_; }
  bool empty() const { return plan_.chunks.empty(); }
  bool sequences_full(int32_t cap) const { return static_cast<int32_t>(plan_.chunks.size()) >= cap; }
  bool sequences_full() const { return sequences_full(limits_.max_sequences); }
  // A uid the cache does not track yet takes one of the tracked-sequence slots left.
  bool can_track(uint64_t uid) const { return kv_.find(uid) != nullptr || track_left_ > 0; }

  // blocks: what the chunk takes from the free blocks of this pass (the static policy counts a request's whole
  // generation here, more than the chunk itself needs).
  void add(uint64_t uid, int32_t tokens, int32_t blocks) {
    DS_ASSERT(tokens > 0 && blocks >= 0 && blocks <= free_left_, "chunk of {} tokens, {} blocks, {} free", tokens,
              blocks, free_left_);
    if (kv_.find(uid) == nullptr) --track_left_;
    plan_.chunks.push_back({uid, tokens});
    tokens_ += tokens;
    free_left_ -= blocks;
  }

  Plan take() { return std::move(plan_); }

 private:
  const SchedulerLimits& limits_;
  const KvStateManager& kv_;
  Plan plan_;
  int32_t tokens_ = 0;
  int32_t free_left_;
  int32_t track_left_;
};

Plan preempt_plan(uint64_t uid) {
  Plan p;
  p.preempt = uid;
  return p;
}

// When a queue with work in it gets no chunk, the last request holding KV is preempted so that the next pass has
// more blocks; with no holder the plan is empty (the requests left cannot fit even an empty cache).
Plan finish_or_preempt(PassBuilder& pass, std::span<const QueuedRequest> queue, const KvStateManager& kv) {
  if (pass.empty() && !queue.empty()) {
    if (const auto victim = last_kv_holder(queue, kv)) return preempt_plan(*victim);
  }
  return pass.take();
}

// One decode token for r: true when it fits (a new block only when its last block is full, and one is free).
bool add_decode(PassBuilder& pass, const QueuedRequest& r, const KvStateManager& kv) {
  const int32_t blocks = kv.remaining_block_capacity(r.uid) == 0 ? 1 : 0;
  if (blocks > pass.free_left()) return false;
  pass.add(r.uid, 1, blocks);
  return true;
}

// Note [SplitFuse as implemented here]
// MII's RaggedBatchBase.schedule_requests (_schedule_token_gen, _schedule_prompts, reset_request_status), with
// four departures, each at an edge of a limit:
//  - the decode limit counts the decodes scheduled: MII slices the first min(n, max_sequences, budget) decodes
//    and then skips those that need a block, leaving their slots unused; here a skipped decode frees its slot;
//  - no separate "no free block" stop in the prompt loop: MII tests the cache's free count from before the
//    decodes, so its per-prompt query with the blocks left already decides every other case; here that query
//    decides all of them, so a split prompt whose rest fits in the blocks it holds may still run;
//  - MII's sequence test is `scheduled > max_sequences` (one over the limit); here it is `>=`;
//  - a prompt of a uid the cache does not track yet needs a tracked-sequence slot, and stops the prompt loop when
//    none is left (MII leaves this to put()).
// The queue replaces MII's buffer. MII puts the rest of a split prompt at the front of its buffer and a preempted
// request at the back; the serving loop keeps both in their arrival place, which for a split prompt is at or ahead
// of every prompt admitted after it, and for a preempted one puts it back in line before the later arrivals.
class SplitFuseScheduler final : public Scheduler {
 public:
  explicit SplitFuseScheduler(const SchedulerLimits& limits) : Scheduler(limits) {}
  Policy policy() const override { return Policy::splitfuse; }

  Plan plan(std::span<const QueuedRequest> queue, const KvStateManager& kv) override {
    check_queue(queue, kv);
    PassBuilder pass(limits_, kv);
    for (const QueuedRequest& r : queue) {  // decodes first, one token each
      if (!r.decoding) continue;
      if (pass.sequences_full() || pass.tokens_left() <= 0) break;
      add_decode(pass, r, kv);  // skipped when it needs a block and none is free
    }
    for (const QueuedRequest& r : queue) {  // then prompts, first come first served
      if (r.decoding) continue;
      if (pass.sequences_full() || pass.tokens_left() <= 0 || !pass.can_track(r.uid)) break;
      // Admit a prompt only when the cache can hold all of its rest: a prompt half in the cache that can never
      // finish would hold its blocks forever (MII's deadlock guard). Stop, not skip, so no later prompt overtakes.
      if (r.pending > 1 && kv.query(r.uid, r.pending, pass.free_left()).tokens < r.pending) break;
      const KvQuery q = kv.query(r.uid, std::min(r.pending, pass.tokens_left()), pass.free_left());
      if (q.tokens <= 0) continue;  // a one-token prompt with no block for it (MII skips it)
      pass.add(r.uid, q.tokens, q.blocks);  // q.tokens < r.pending splits the prompt to fill the budget exactly
    }
    return finish_or_preempt(pass, queue, kv);
  }
};

// vLLM v0's first scheduler: a pass of whole waiting prompts whenever at least one fits, else a pass of every
// decode. Prompts are never split; one longer than the budget runs alone. See Note [Prefill-first keeps the
// decodes' next blocks].
//
// Note [Prefill-first keeps the decodes' next blocks]
// vLLM preempts inside the decode step: the newest running requests are evicted until the older ones have their
// next slot, and those run in the same step. Here a preemption is a plan of its own, and the pass after it would
// see the evicted request waiting and, prompts first, hand it straight back the blocks it had just freed. While
// arrivals keep coming that repeats: the newest request is evicted and re-prefilled over and over, and the oldest
// decodes starve (Scheduler.NoPolicyStarvesALongPromptBehindAStreamOfShortOnes: thousands of passes instead of
// tens for the long request). So a prompt is admitted only with the
// blocks that remain after one block for every decoding request whose last block is full, which is what vLLM's
// same-step allocation gives them (vLLM also keeps a watermark of free blocks from prompts, for the same reason).
class PrefillFirstScheduler final : public Scheduler {
 public:
  explicit PrefillFirstScheduler(const SchedulerLimits& limits) : Scheduler(limits) {}
  Policy policy() const override { return Policy::prefill_first; }

  Plan plan(std::span<const QueuedRequest> queue, const KvStateManager& kv) override {
    check_queue(queue, kv);
    PassBuilder pass(limits_, kv);
    const auto decode_blocks = std::count_if(queue.begin(), queue.end(), [&](const QueuedRequest& r) {
      return r.decoding && kv.remaining_block_capacity(r.uid) == 0;
    });
    for (const QueuedRequest& r : queue) {  // whole prompts, first come first served
      if (r.decoding) continue;
      if (pass.sequences_full() || !pass.can_track(r.uid)) break;
      if (!pass.empty() && r.pending > pass.tokens_left()) break;
      const int32_t spare = std::max<int32_t>(0, pass.free_left() - static_cast<int32_t>(decode_blocks));
      const KvQuery q = kv.query(r.uid, r.pending, spare);
      if (q.tokens < r.pending) break;
      pass.add(r.uid, r.pending, q.blocks);
    }
    if (!pass.empty()) return pass.take();

    for (const QueuedRequest& r : queue) {  // no prompt fits: every decode
      if (!r.decoding) continue;
      if (pass.sequences_full() || pass.tokens_left() <= 0) break;
      if (!add_decode(pass, r, kv)) {
        // Out of blocks: preempt the newest running request (vLLM's recompute preemption) and plan again.
        const auto victim = last_kv_holder(queue, kv, [](const QueuedRequest& q) { return q.decoding; });
        DS_ASSERT(victim.has_value(), "a decode needs a block but no decoding request holds KV");
        return preempt_plan(*victim);
      }
    }
    return finish_or_preempt(pass, queue, kv);
  }
};

// Note [Static batches]
// Static batching as a server without continuous batching runs it: a batch of up to static_batch_size requests,
// first come first served, is formed only when the previous batch has finished; its prompts are prefilled first
// (in passes of the token budget, the last prompt of a pass split to fill it, so a batch is not limited to the
// prompts that fit one pass), and then all its members decode in lockstep until the last one finishes. Requests
// arriving meanwhile wait for the next batch. A batch larger than a pass's tokens or sequences could not decode in
// lockstep, so make_scheduler refuses one.
// Static batches never run out of blocks: a member is admitted only when the blocks left can hold its pending +
// max_new_tokens tokens, counted over the whole batch against the free blocks; waiting requests hold no KV (they
// are admitted only into the next batch), and a member writes at most pending + max_new_tokens - 1 tokens (its
// last sampled token never runs). So every chunk and decode finds a slot in the blocks its batch was promised,
// and the preemption below is only a guard against a broken contract (a queue entry whose pending +
// max_new_tokens grew, or a cache shared with something else).
class StaticBatchScheduler final : public Scheduler {
 public:
  explicit StaticBatchScheduler(const SchedulerLimits& limits) : Scheduler(limits) {}
  Policy policy() const override { return Policy::static_batch; }

  Plan plan(std::span<const QueuedRequest> queue, const KvStateManager& kv) override {
    check_queue(queue, kv);
    std::unordered_set<uint64_t> queued;
    for (const QueuedRequest& r : queue) queued.insert(r.uid);
    std::erase_if(batch_, [&](uint64_t uid) { return !queued.count(uid); });  // finished or cancelled
    if (batch_.empty()) form_batch(queue, kv);

    PassBuilder pass(limits_, kv);
    const bool prefilling = std::any_of(queue.begin(), queue.end(), [&](const QueuedRequest& r) {
      return batch_.count(r.uid) && !r.decoding;
    });
    for (const QueuedRequest& r : queue) {
      if (!batch_.count(r.uid)) continue;
      if (pass.sequences_full() || pass.tokens_left() <= 0 || !pass.can_track(r.uid)) break;
      if (prefilling) {
        if (r.decoding) continue;  // its first token is out; it waits for the rest of the batch
        const KvQuery q = kv.query(r.uid, std::min(r.pending, pass.tokens_left()), pass.free_left());
        if (q.tokens <= 0) break;  // cannot happen with the blocks promised; finish_or_preempt guards
        pass.add(r.uid, q.tokens, q.blocks);
      } else if (!add_decode(pass, r, kv)) {
        return preempt_plan(*last_kv_holder(queue, kv));
      }
    }
    return finish_or_preempt(pass, queue, kv);
  }

 private:
  void form_batch(std::span<const QueuedRequest> queue, const KvStateManager& kv) {
    const int32_t cap = std::min(limits_.static_batch_size, kv.max_tracked_sequences() - kv.tracked_sequences());
    int32_t free = kv.free_blocks();
    for (const QueuedRequest& r : queue) {
      if (static_cast<int32_t>(batch_.size()) >= cap) break;
      const int32_t lifetime = r.pending + std::max(r.max_new_tokens, 0);
      const KvQuery q = kv.query(r.uid, lifetime, free);
      if (q.tokens < lifetime) break;
      free -= q.blocks;
      batch_.insert(r.uid);
    }
  }

  std::unordered_set<uint64_t> batch_;  // the running batch's members still queued
};

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(Policy policy, const SchedulerLimits& limits) {
  DS_CHECK_AS(ConfigError, limits.token_budget > 0, "[scheduler] the token budget per pass must be positive, got {}",
              limits.token_budget);
  DS_CHECK_AS(ConfigError, limits.max_sequences > 0,
              "[scheduler] the sequences per pass must be positive, got {}", limits.max_sequences);
  DS_CHECK_AS(ConfigError, limits.static_batch_size > 0,
              "[scheduler] the static batch size must be positive, got {}", limits.static_batch_size);
  DS_CHECK_AS(ConfigError, policy != Policy::static_batch ||
              limits.static_batch_size <= std::min(limits.token_budget, limits.max_sequences),
              "[scheduler] a static batch of {} requests cannot decode in lockstep with {} tokens and {} sequences "
              "per pass; lower --static-batch or raise --token-budget and --max-sequences",
              limits.static_batch_size, limits.token_budget, limits.max_sequences);
  switch (policy) {
    case Policy::splitfuse: return std::make_unique<SplitFuseScheduler>(limits);
    case Policy::prefill_first: return std::make_unique<PrefillFirstScheduler>(limits);
    case Policy::static_batch: return std::make_unique<StaticBatchScheduler>(limits);
  }
  DS_ASSERT(false, "unknown Policy value {}", static_cast<int>(policy));
  return nullptr;
}

}  // namespace ds::inference
