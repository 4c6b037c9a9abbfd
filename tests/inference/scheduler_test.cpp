// Scheduling policies tested with no model: a small simulator plays the serving loop (reserve, advance, one token
// sampled when a chunk ends its pending tokens, flush when max_new_tokens are out, preemption by recompute) over
// recorded traces, and checks every plan against the limits and each policy's composition rules, computed here
// from the KV state and the queue, not by the scheduler. Hand-made cases pin exact plans, worked out by hand in the
// comments. Also the KV arithmetic the policies rely on: BlockedAllocator and KvStateManager::query.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ds/core/error.h"
#include "ds/inference/kv_cache.h"
#include "ds/inference/scheduler.h"

using namespace ds::inference;

namespace {

using ChunkList = std::vector<std::pair<uint64_t, int32_t>>;  // (uid, tokens) in batch order
using Queue = std::vector<QueuedRequest>;

ChunkList chunks_of(const Plan& p) {
  ChunkList out;
  for (const Chunk& c : p.chunks) out.emplace_back(c.uid, c.tokens);
  return out;
}

int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

// Puts `seen` tokens of uid in the cache, as passes of the loop would have.
void fill(KvStateManager& kv, uint64_t uid, int32_t seen) {
  kv.reserve(uid, seen);
  kv.advance(uid, seen);
}

SchedulerLimits limits_of(int32_t budget, int32_t max_sequences, int32_t static_batch = 16) {
  SchedulerLimits l;
  l.token_budget = budget;
  l.max_sequences = max_sequences;
  l.static_batch_size = static_batch;
  return l;
}

struct TraceRequest {
  int32_t arrival = 0;  // the pass before which it joins the queue
  int32_t prompt = 0;
  int32_t max_new = 0;
};

struct KvShape {
  int32_t block_count = 0, block_size = 0, max_tracked = 0, max_context = 0;
};

// The serving loop of serving_loop.cpp reduced to its bookkeeping: uids are 1.. in arrival order.
class LoopSim {
 public:
  struct Request {
    uint64_t uid = 0;
    TraceRequest t;
    int32_t pending = 0, generated = 0, max_new_left = 0;
    bool decoding = false;
    int32_t finish_pass = -1, preemptions = 0;
  };

  LoopSim(Policy policy, const SchedulerLimits& limits, const KvShape& shape, std::vector<TraceRequest> trace)
      : policy_(policy), limits_(limits), kv_(shape.block_count, shape.block_size, shape.max_tracked,
                                              shape.max_context),
        sched_(make_scheduler(policy, limits)) {
    std::stable_sort(trace.begin(), trace.end(),
                     [](const TraceRequest& a, const TraceRequest& b) { return a.arrival < b.arrival; });
    for (const TraceRequest& t : trace) {
      Request r;
      r.uid = all_.size() + 1;
      r.t = t;
      r.pending = t.prompt;
      r.max_new_left = t.max_new;
      all_.push_back(r);
    }
  }

  bool done() const { return next_ == all_.size() && active_.empty(); }

  void run(int32_t max_passes) {
    while (!done() && violations_.empty()) {
      if (pass_ >= max_passes) {
        violate(fmt::format("not finished after {} passes ({} requests unfinished)", pass_,
                            active_.size() + (all_.size() - next_)));
        return;
      }
      step();
    }
  }

  void step() {
    while (next_ < all_.size() && all_[next_].t.arrival <= pass_) active_.push_back(next_++);
    std::vector<QueuedRequest> queue;
    for (size_t i : active_) {
      const Request& r = all_[i];
      queue.push_back({r.uid, r.pending, r.decoding, r.max_new_left});
    }
    const Plan plan = sched_->plan(queue, kv_);
    check(plan, queue);
    if (violations_.empty()) apply(plan);
    plans_.push_back(plan);
    ++pass_;
  }

  const std::vector<Plan>& plans() const { return plans_; }
  const std::vector<std::string>& violations() const { return violations_; }
  const std::vector<Request>& requests() const { return all_; }
  const Request& request(uint64_t uid) const { return all_[uid - 1]; }
  const KvStateManager& kv() const { return kv_; }
  int32_t passes() const { return pass_; }
  int32_t preemptions() const { return preemptions_; }
  int32_t splits() const { return splits_; }

 private:
  void violate(std::string what) { violations_.push_back(fmt::format("pass {}: {}", pass_, what)); }

  // Every rule a plan must keep, from the queue and the cache as they are before the pass.
  void check(const Plan& plan, const std::vector<QueuedRequest>& queue) {
    std::unordered_map<uint64_t, size_t> pos;
    for (size_t i = 0; i < queue.size(); ++i) pos[queue[i].uid] = i;
    if (queue.empty()) {
      if (!plan.empty()) violate("a plan for an empty queue");
      return;
    }
    if (plan.empty()) return violate(fmt::format("nothing scheduled or preempted, {} requests queued", queue.size()));
    if (plan.preempt) {
      if (!plan.chunks.empty()) violate("a plan both preempts and runs chunks");
      if (!pos.count(*plan.preempt)) violate(fmt::format("preempts {}, which is not queued", *plan.preempt));
      if (kv_.find(*plan.preempt) == nullptr) violate(fmt::format("preempts {}, which holds no KV", *plan.preempt));
      // See Note [Static batches never run out of blocks] in scheduler.cpp.
      if (policy_ == Policy::static_batch) violate("the static policy preempted");
      return;
    }
    const int32_t bs = kv_.kv_block_size();
    int32_t tokens = 0, blocks = 0, new_seqs = 0;
    std::unordered_set<uint64_t> uids;
    for (const Chunk& c : plan.chunks) {
      if (!uids.insert(c.uid).second) violate(fmt::format("uid {} scheduled twice", c.uid));
      const auto it = pos.find(c.uid);
      if (it == pos.end()) return violate(fmt::format("uid {} is not queued", c.uid));
      const QueuedRequest& q = queue[it->second];
      if (c.tokens < 1 || c.tokens > q.pending)
        violate(fmt::format("uid {}: {} tokens of {} pending", c.uid, c.tokens, q.pending));
      const SequenceKv* s = kv_.find(c.uid);
      const int32_t seen = s ? s->seen_tokens : 0;
      const int32_t held = s ? static_cast<int32_t>(s->blocks.size()) : 0;
      if (!s) ++new_seqs;
      if (seen + c.tokens > kv_.max_context()) violate(fmt::format("uid {} runs past the context", c.uid));
      blocks += std::max(0, ceil_div(seen + c.tokens, bs) - held);
      tokens += c.tokens;
    }
    if (blocks > kv_.free_blocks()) violate(fmt::format("needs {} blocks, {} free", blocks, kv_.free_blocks()));
    if (kv_.tracked_sequences() + new_seqs > kv_.max_tracked_sequences())
      violate(fmt::format("tracks {} + {} sequences, limit {}", kv_.tracked_sequences(), new_seqs,
                          kv_.max_tracked_sequences()));
    if (static_cast<int32_t>(plan.chunks.size()) > limits_.max_sequences)
      violate(fmt::format("{} sequences, limit {}", plan.chunks.size(), limits_.max_sequences));
    const QueuedRequest& first = queue[pos[plan.chunks[0].uid]];
    const bool long_prompt_alone = policy_ == Policy::prefill_first && plan.chunks.size() == 1 && !first.decoding &&
                                   plan.chunks[0].tokens == first.pending;
    if (tokens > limits_.token_budget && !long_prompt_alone)
      violate(fmt::format("{} tokens, budget {}", tokens, limits_.token_budget));

    int32_t n_prompts = 0, last_prompt_pos = -1;
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      const Chunk& c = plan.chunks[i];
      const QueuedRequest& q = queue[pos[c.uid]];
      if (q.decoding) {
        if (n_prompts > 0 && policy_ == Policy::splitfuse) violate(fmt::format("decode {} after a prompt", c.uid));
        continue;
      }
      ++n_prompts;
      last_prompt_pos = std::max(last_prompt_pos, static_cast<int32_t>(pos[c.uid]));
      if (c.tokens < q.pending) {  // a split prompt
        if (policy_ == Policy::prefill_first) violate(fmt::format("prompt {} split by prefill-first", c.uid));
        if (i + 1 != plan.chunks.size()) violate(fmt::format("split prompt {} is not the last chunk", c.uid));
        if (tokens != limits_.token_budget)
          violate(fmt::format("prompt {} split in a pass of {} tokens", c.uid, tokens));
      }
    }
    const int32_t n_decodes = static_cast<int32_t>(plan.chunks.size()) - n_prompts;
    if (policy_ == Policy::prefill_first && n_prompts > 0 && n_decodes > 0) violate("prefill-first mixed a pass");
    if (policy_ == Policy::static_batch) {
      // A batch starts when nothing holds KV; its members were all queued then (arrivals wait for the next one).
      const bool idle = std::none_of(queue.begin(), queue.end(), [&](const QueuedRequest& q) {
        return kv_.find(q.uid) != nullptr;
      });
      if (idle) {
        cohort_.clear();
        for (const QueuedRequest& q : queue) cohort_.insert(q.uid);
      }
      for (const Chunk& c : plan.chunks)
        if (!cohort_.count(c.uid)) violate(fmt::format("static ran {}, which arrived after its batch started", c.uid));
      if (n_prompts > 0 && n_decodes > 0) violate("static mixed prompts and decodes");
      const bool prefilling = std::any_of(queue.begin(), queue.end(), [&](const QueuedRequest& q) {
        return !q.decoding && kv_.find(q.uid) != nullptr;
      });
      if (n_decodes > 0 && prefilling) violate("static decoded before its batch was prefilled");
      if (kv_.tracked_sequences() + new_seqs > limits_.static_batch_size)
        violate(fmt::format("static batch of {}", kv_.tracked_sequences() + new_seqs));
    }
    // Prompts are admitted first come first served: none runs while an earlier prompt waits (splitfuse may skip
    // a one-token prompt that has no block, as MII does).
    for (int32_t i = 0; i < last_prompt_pos; ++i) {
      const QueuedRequest& q = queue[static_cast<size_t>(i)];
      if (q.decoding || uids.count(q.uid) || (policy_ == Policy::splitfuse && q.pending == 1)) continue;
      violate(fmt::format("a later prompt overtook waiting prompt {}", q.uid));
    }
  }

  void apply(const Plan& plan) {
    if (plan.preempt) {
      Request& r = all_[*plan.preempt - 1];
      if (!kv_.flush(r.uid)) violate(fmt::format("flush of preempted {} found nothing", r.uid));
      r.pending = r.t.prompt + r.generated;
      r.decoding = false;
      ++r.preemptions;
      ++preemptions_;
      return;
    }
    try {
      for (const Chunk& c : plan.chunks) kv_.reserve(c.uid, c.tokens);
    } catch (const ds::Error& e) {
      return violate(fmt::format("reserve failed: {}", e.what()));
    }
    int64_t held = 0;
    for (size_t i : active_)
      if (const SequenceKv* s = kv_.find(all_[i].uid)) held += static_cast<int64_t>(s->blocks.size());
    if (held != kv_.used_blocks() || kv_.used_blocks() > kv_.kv_block_count())
      violate(fmt::format("{} blocks used, queued requests hold {}, {} exist", kv_.used_blocks(), held,
                          kv_.kv_block_count()));
    std::vector<size_t> finished;
    for (const Chunk& c : plan.chunks) {
      Request& r = all_[c.uid - 1];
      kv_.advance(c.uid, c.tokens);
      if (c.tokens < r.pending) {
        r.pending -= c.tokens;
        ++splits_;
        continue;
      }
      ++r.generated;  // sampled
      --r.max_new_left;
      r.pending = 1;
      r.decoding = true;
      if (r.max_new_left == 0) {
        kv_.flush(r.uid);
        r.finish_pass = pass_;
        finished.push_back(c.uid - 1);
      }
    }
    std::erase_if(active_, [&](size_t i) { return std::find(finished.begin(), finished.end(), i) != finished.end(); });
  }

  Policy policy_;
  SchedulerLimits limits_;
  KvStateManager kv_;
  std::unique_ptr<Scheduler> sched_;
  std::vector<Request> all_;   // by uid - 1, in arrival order
  size_t next_ = 0;            // the next to arrive
  std::vector<size_t> active_;  // unfinished arrived requests, arrival order
  std::vector<Plan> plans_;
  std::vector<std::string> violations_;
  std::unordered_set<uint64_t> cohort_;  // static: the requests queued when the running batch started
  int32_t pass_ = 0, preemptions_ = 0, splits_ = 0;
};

std::string first_violations(const LoopSim& sim) {
  std::string s;
  for (size_t i = 0; i < std::min<size_t>(sim.violations().size(), 5); ++i) s += sim.violations()[i] + "\n";
  return s;
}

// Every request ran to its last token and the cache is empty again.
void expect_all_finished(const LoopSim& sim) {
  for (const LoopSim::Request& r : sim.requests()) {
    EXPECT_GE(r.finish_pass, r.t.arrival) << "request " << r.uid << " never finished";
    EXPECT_EQ(r.generated, r.t.max_new) << "request " << r.uid;
  }
  EXPECT_EQ(sim.kv().used_blocks(), 0) << "KV blocks leaked";
  EXPECT_EQ(sim.kv().tracked_sequences(), 0);
}

// splitmix64: a fixed stream whatever the standard library.
uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// prompt in [1, max_prompt], max_new in [1, min(max_new_cap, max_total - prompt)], arrival in [0, last_arrival].
std::vector<TraceRequest> random_trace(uint64_t seed, int n, int32_t last_arrival, int32_t max_prompt,
                                       int32_t max_new_cap, int32_t max_total) {
  std::vector<TraceRequest> t;
  for (int i = 0; i < n; ++i) {
    TraceRequest r;
    r.arrival = static_cast<int32_t>(next_random(seed) % uint64_t(last_arrival + 1));
    r.prompt = 1 + static_cast<int32_t>(next_random(seed) % uint64_t(max_prompt));
    const int32_t cap = std::min(max_new_cap, max_total - r.prompt);
    r.max_new = 1 + static_cast<int32_t>(next_random(seed) % uint64_t(cap));
    t.push_back(r);
  }
  return t;
}

const Policy kPolicies[] = {Policy::splitfuse, Policy::prefill_first, Policy::static_batch};

}  // namespace

// ---- names and limits ----

TEST(Scheduler, ParsePolicyAcceptsTheThreeNamesOnly) {
  EXPECT_EQ(parse_policy("splitfuse"), Policy::splitfuse);
  EXPECT_EQ(parse_policy("prefill-first"), Policy::prefill_first);
  EXPECT_EQ(parse_policy("static"), Policy::static_batch);
  for (Policy p : kPolicies) EXPECT_EQ(parse_policy(policy_name(p)), p);
  for (const char* bad : {"", "SplitFuse", "prefill_first", "vllm"}) {
    try {
      parse_policy(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ds::ConfigError& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind("[scheduler]", 0), 0u) << m;
      for (const char* name : {"splitfuse", "prefill-first", "static"}) EXPECT_NE(m.find(name), std::string::npos) << m;
    }
  }
}

TEST(Scheduler, MakeSchedulerRejectsLimitsBelowOne) {
  for (Policy p : kPolicies) {
    EXPECT_EQ(make_scheduler(p, limits_of(1, 1, 1))->policy(), p);
    EXPECT_THROW(make_scheduler(p, limits_of(0, 8)), ds::ConfigError);
    EXPECT_THROW(make_scheduler(p, limits_of(8, 0)), ds::ConfigError);
    EXPECT_THROW(make_scheduler(p, limits_of(8, 8, 0)), ds::ConfigError);
    // A static batch must fit one lockstep decode pass; the other policies ignore the static batch size.
    if (p == Policy::static_batch) {
      EXPECT_THROW(make_scheduler(p, limits_of(4, 8, 5)), ds::ConfigError);
      EXPECT_THROW(make_scheduler(p, limits_of(8, 4, 5)), ds::ConfigError);
      EXPECT_EQ(make_scheduler(p, limits_of(5, 5, 5))->policy(), p);
    } else {
      EXPECT_EQ(make_scheduler(p, limits_of(4, 4, 16))->policy(), p);
    }
  }
}

// ---- splitfuse, hand-made cases ----

TEST(Scheduler, SplitFuseDecodesFirst) {
  // Blocks of 4, 10 blocks. A (uid 1) has 5 tokens cached (2 blocks, 3 slots left); B (uid 2) has 8 (2 blocks,
  // full, so its decode takes a block). C (uid 3) arrived first: a 10-token prompt (3 blocks). Budget 10: the
  // decodes of A and B come first (1 + 1 tokens, 1 block), then C gets the 8 tokens left, and is split.
  KvStateManager kv(10, 4, 16, 64);
  fill(kv, 1, 5);
  fill(kv, 2, 8);
  const Queue queue = {{3, 10, false, 4}, {1, 1, true, 4}, {2, 1, true, 4}};
  const Plan plan = make_scheduler(Policy::splitfuse, limits_of(10, 8))->plan(queue, kv);
  EXPECT_FALSE(plan.preempt);
  EXPECT_EQ(chunks_of(plan), (ChunkList{{1, 1}, {2, 1}, {3, 8}}));

  // With a budget of 2 only the decodes run; with a sequence limit of 1 only A's.
  EXPECT_EQ(chunks_of(make_scheduler(Policy::splitfuse, limits_of(2, 8))->plan(queue, kv)),
            (ChunkList{{1, 1}, {2, 1}}));
  EXPECT_EQ(chunks_of(make_scheduler(Policy::splitfuse, limits_of(10, 1))->plan(queue, kv)), (ChunkList{{1, 1}}));
}

TEST(Scheduler, SplitFuseSkipsADecodeThatHasNoBlock) {
  // Blocks of 4, 4 blocks, all held: A (8 tokens, full) needs a block for its decode and none is free, so it is
  // skipped; B (6 tokens, 2 slots left) decodes.
  KvStateManager kv(4, 4, 16, 64);
  fill(kv, 1, 8);
  fill(kv, 2, 6);
  const Queue queue = {{1, 1, true, 4}, {2, 1, true, 4}};
  EXPECT_EQ(chunks_of(make_scheduler(Policy::splitfuse, limits_of(16, 8))->plan(queue, kv)), (ChunkList{{2, 1}}));
}

TEST(Scheduler, SplitFusePacksPromptsInOrderAndSplitsTheLastToFillTheBudget) {
  // Budget 16: prompts of 5, 4 and 10 tokens arrive together. Pass 0: 5 + 4 + the first 7 of the third (16).
  // Pass 1: the two finished prompts decode first, then the 3 tokens left of the third. Passes 2, 3: decodes
  // until each has its 3 tokens (the third sampled its first at pass 1).
  LoopSim sim(Policy::splitfuse, limits_of(16, 8), {16, 4, 16, 64}, {{0, 5, 3}, {0, 4, 3}, {0, 10, 3}});
  sim.run(100);
  ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
  ASSERT_EQ(sim.plans().size(), 4u);
  EXPECT_EQ(chunks_of(sim.plans()[0]), (ChunkList{{1, 5}, {2, 4}, {3, 7}}));
  EXPECT_EQ(chunks_of(sim.plans()[1]), (ChunkList{{1, 1}, {2, 1}, {3, 3}}));
  EXPECT_EQ(chunks_of(sim.plans()[2]), (ChunkList{{1, 1}, {2, 1}, {3, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[3]), (ChunkList{{3, 1}}));
  expect_all_finished(sim);
}

TEST(Scheduler, SplitFuseStopsAtAPromptTheCacheCannotHold) {
  // Blocks of 4, 4 blocks (16 slots), budget 64. P1 (6 tokens) takes 2 blocks. P2 (12 tokens) needs 3 of the 2
  // left: not admitted, although 8 of its tokens would fit, and P3 (2 tokens, 1 block) does not overtake it.
  KvStateManager kv(4, 4, 16, 64);
  const Queue queue = {{1, 6, false, 2}, {2, 12, false, 2}, {3, 2, false, 2}};
  const Plan plan = make_scheduler(Policy::splitfuse, limits_of(64, 8))->plan(queue, kv);
  EXPECT_EQ(chunks_of(plan), (ChunkList{{1, 6}}));
  EXPECT_FALSE(plan.preempt);
}

TEST(Scheduler, SplitFuseStopsAtTheTrackedSequenceLimit) {
  // Only 2 sequences may be tracked and uid 9 already is: one new prompt gets in, the next waits.
  KvStateManager kv(16, 4, 2, 64);
  fill(kv, 9, 3);
  const Queue queue = {{9, 1, true, 4}, {1, 3, false, 2}, {2, 3, false, 2}};
  EXPECT_EQ(chunks_of(make_scheduler(Policy::splitfuse, limits_of(64, 8))->plan(queue, kv)),
            (ChunkList{{9, 1}, {1, 3}}));
}

TEST(Scheduler, SplitFusePreemptsTheLastKvHolderWhenNothingCanRun) {
  // Blocks of 4, 3 blocks, none free: A (uid 1) decodes with 8 tokens (full), B (uid 2) has run 4 of its 8
  // prompt tokens (1 block, full), C (uid 3) waits with no KV. A's decode has no block; B's rest does not fit;
  // C is after B. Nothing runs, so B, the last request holding KV (not C, which holds none), is preempted.
  KvStateManager kv(3, 4, 16, 64);
  fill(kv, 1, 8);
  fill(kv, 2, 4);
  const Queue queue = {{1, 1, true, 4}, {2, 4, false, 4}, {3, 3, false, 4}};
  const Plan plan = make_scheduler(Policy::splitfuse, limits_of(64, 8))->plan(queue, kv);
  EXPECT_TRUE(plan.chunks.empty());
  ASSERT_TRUE(plan.preempt);
  EXPECT_EQ(*plan.preempt, 2u);

  // A prompt longer than the whole cache, and nothing holding KV: an empty plan (nothing can ever help it).
  KvStateManager empty(4, 4, 16, 64);
  EXPECT_TRUE(make_scheduler(Policy::splitfuse, limits_of(64, 8))->plan(Queue{{7, 20, false, 1}}, empty).empty());
}

TEST(Scheduler, SplitFusePreemptedRequestCompletes) {
  // Blocks of 4, 2 blocks, budget 8. A and B (prompt 4, 3 new tokens each) arrive together.
  //   pass 0: A 4, B 4 (1 block each, none free); each samples a token.
  //   pass 1: both decodes need a block, none is free, no prompt waits: B (the last holding KV) is preempted and
  //           becomes a 5-token prompt (4 + its token) with 2 tokens to go.
  //   pass 2: A decodes (takes the freed block); B's 5 tokens need 2 blocks, 0 left: it waits.
  //   pass 3: A decodes (room in its block) and finishes: its 2 blocks are freed.
  //   pass 4: B 5 (2 blocks), samples; pass 5: B decodes and finishes.
  LoopSim sim(Policy::splitfuse, limits_of(8, 8), {2, 4, 16, 8}, {{0, 4, 3}, {0, 4, 3}});
  sim.run(100);
  ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
  ASSERT_EQ(sim.plans().size(), 6u);
  EXPECT_EQ(chunks_of(sim.plans()[0]), (ChunkList{{1, 4}, {2, 4}}));
  EXPECT_TRUE(sim.plans()[1].chunks.empty());
  EXPECT_EQ(sim.plans()[1].preempt, std::optional<uint64_t>(2));
  EXPECT_EQ(chunks_of(sim.plans()[2]), (ChunkList{{1, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[3]), (ChunkList{{1, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[4]), (ChunkList{{2, 5}}));
  EXPECT_EQ(chunks_of(sim.plans()[5]), (ChunkList{{2, 1}}));
  EXPECT_EQ(sim.request(2).preemptions, 1);
  EXPECT_EQ(sim.request(1).finish_pass, 3);
  EXPECT_EQ(sim.request(2).finish_pass, 5);
  expect_all_finished(sim);
}

// ---- prefill-first, hand-made cases ----

TEST(Scheduler, PrefillFirstPacksWholePromptsAndNeverMixes) {
  // Blocks of 4, 8 blocks, budget 10. A (uid 1) decodes; B 6, C 3, D 4 tokens wait. Whole prompts in order:
  // 6 + 3 = 9, and D would make 13 > 10: the pass is B and C only, with no decode.
  KvStateManager kv(8, 4, 16, 64);
  fill(kv, 1, 5);
  const Queue queue = {{1, 1, true, 4}, {2, 6, false, 4}, {3, 3, false, 4},
                                            {4, 4, false, 4}};
  EXPECT_EQ(chunks_of(make_scheduler(Policy::prefill_first, limits_of(10, 8))->plan(queue, kv)),
            (ChunkList{{2, 6}, {3, 3}}));
}

TEST(Scheduler, PrefillFirstRunsAPromptLongerThanTheBudgetAlone) {
  // Budget 10, blocks of 4, 8 blocks. A first prompt of 20 tokens (5 blocks) runs alone; as a second prompt it
  // waits for the next pass.
  KvStateManager kv(8, 4, 16, 64);
  auto sched = make_scheduler(Policy::prefill_first, limits_of(10, 8));
  EXPECT_EQ(chunks_of(sched->plan(Queue{{1, 20, false, 2}, {2, 2, false, 2}}, kv)), (ChunkList{{1, 20}}));
  EXPECT_EQ(chunks_of(sched->plan(Queue{{2, 2, false, 2}, {1, 20, false, 2}}, kv)), (ChunkList{{2, 2}}));
}

TEST(Scheduler, PrefillFirstDecodesWhenNoPromptFits) {
  // Blocks of 4, 6 blocks: A (5 tokens, 2 blocks, room left) and B (8 tokens, 2 blocks, full) decode; W, a
  // 40-token prompt, needs 10 blocks of the 2 free. A decode pass: A 1 (no block), B 1 (1 block).
  KvStateManager kv(6, 4, 16, 64);
  fill(kv, 1, 5);
  fill(kv, 2, 8);
  const Queue queue = {{1, 1, true, 4}, {2, 1, true, 4}, {3, 40, false, 4}};
  EXPECT_EQ(chunks_of(make_scheduler(Policy::prefill_first, limits_of(64, 8))->plan(queue, kv)),
            (ChunkList{{1, 1}, {2, 1}}));
}

TEST(Scheduler, PrefillFirstPreemptsTheNewestDecodeWhenOutOfBlocks) {
  // Blocks of 4, 3 blocks, none free: A (8 tokens) and B (4 tokens) decode, both full; W (2 tokens) waits and
  // has no block. A's decode has no block: B, the newest decoding request, is preempted (not W, which holds none).
  KvStateManager kv(3, 4, 16, 64);
  fill(kv, 1, 8);
  fill(kv, 2, 4);
  const Queue queue = {{1, 1, true, 4}, {2, 1, true, 4}, {3, 2, false, 4}};
  const Plan plan = make_scheduler(Policy::prefill_first, limits_of(64, 8))->plan(queue, kv);
  EXPECT_TRUE(plan.chunks.empty());
  EXPECT_EQ(plan.preempt, std::optional<uint64_t>(2));
}

TEST(Scheduler, PrefillFirstKeepsABlockForEachFullDecode) {
  // Blocks of 4, 4 blocks: A decodes with 8 tokens (2 blocks, full), so its next token needs 1 of the 2 free
  // blocks. An 8-token prompt (2 blocks) would leave A none: a decode pass instead. A 4-token prompt (1 block)
  // leaves A its block and runs. See Note [Prefill-first keeps the decodes' next blocks].
  KvStateManager kv(4, 4, 16, 64);
  fill(kv, 1, 8);
  auto sched = make_scheduler(Policy::prefill_first, limits_of(64, 8));
  EXPECT_EQ(chunks_of(sched->plan(Queue{{1, 1, true, 4}, {2, 8, false, 4}}, kv)), (ChunkList{{1, 1}}));
  EXPECT_EQ(chunks_of(sched->plan(Queue{{1, 1, true, 4}, {2, 4, false, 4}}, kv)), (ChunkList{{2, 4}}));
}

// ---- static, hand-made cases ----

TEST(Scheduler, StaticAdmitsNothingWhileABatchRuns) {
  // Batch size 2, blocks of 4, 16 blocks. A (3 tokens, 2 new) and B (5, 4) arrive at pass 0, C (2, 1) at pass 1.
  //   pass 0: A 3, B 5 (both sample);   pass 1: A 1, B 1 (A has its 2 and finishes);
  //   passes 2, 3: B 1 (B finishes at 3) while C waits;   pass 4: C 2, done.
  LoopSim sim(Policy::static_batch, limits_of(64, 8, 2), {16, 4, 16, 64}, {{0, 3, 2}, {0, 5, 4}, {1, 2, 1}});
  sim.run(100);
  ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
  ASSERT_EQ(sim.plans().size(), 5u);
  EXPECT_EQ(chunks_of(sim.plans()[0]), (ChunkList{{1, 3}, {2, 5}}));
  EXPECT_EQ(chunks_of(sim.plans()[1]), (ChunkList{{1, 1}, {2, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[2]), (ChunkList{{2, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[3]), (ChunkList{{2, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[4]), (ChunkList{{3, 2}}));
  expect_all_finished(sim);
}

TEST(Scheduler, StaticAdmitsOnlyWithKvForTheWholeGeneration) {
  // Blocks of 4, 4 blocks, batch size 3. A: 3 + 6 = 9 tokens, 3 blocks. B: 2 + 3 = 5 tokens, 2 blocks of the 1
  // left: the batch stops there, and C (1 + 1, 1 block) does not overtake B.
  KvStateManager kv(4, 4, 16, 64);
  auto sched = make_scheduler(Policy::static_batch, limits_of(64, 8, 3));
  EXPECT_EQ(chunks_of(sched->plan(Queue{{1, 3, false, 6}, {2, 2, false, 3}, {3, 1, false, 1}}, kv)),
            (ChunkList{{1, 3}}));
}

TEST(Scheduler, StaticPrefillsABatchOverSeveralPassesThenDecodesInLockstep) {
  // Budget 6, batch size 3, blocks of 4, 16 blocks. A (4 tokens, 2 new), B (7, 3) and C (3, 1) form the batch; D
  // (2, 1) arrives at pass 1 and waits for the next batch.
  //   pass 0: A 4, B 2 (split to fill the budget);   pass 1: B 5 (B samples), C 1 (split);
  //   pass 2: C 2 (C samples its one token and is done; A and B wait with their first token);
  //   pass 3: A 1, B 1 (the batch decodes once every member is prefilled; A is done);   pass 4: B 1;   pass 5: D 2.
  LoopSim sim(Policy::static_batch, limits_of(6, 8, 3), {16, 4, 16, 64},
              {{0, 4, 2}, {0, 7, 3}, {0, 3, 1}, {1, 2, 1}});
  sim.run(100);
  ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
  ASSERT_EQ(sim.plans().size(), 6u);
  EXPECT_EQ(chunks_of(sim.plans()[0]), (ChunkList{{1, 4}, {2, 2}}));
  EXPECT_EQ(chunks_of(sim.plans()[1]), (ChunkList{{2, 5}, {3, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[2]), (ChunkList{{3, 2}}));
  EXPECT_EQ(chunks_of(sim.plans()[3]), (ChunkList{{1, 1}, {2, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[4]), (ChunkList{{2, 1}}));
  EXPECT_EQ(chunks_of(sim.plans()[5]), (ChunkList{{4, 2}}));
  expect_all_finished(sim);
}

// ---- every policy on recorded traces ----

TEST(Scheduler, RandomTracesKeepEveryLimitAndFinishEveryRequest) {
  struct Case {
    const char* name;
    KvShape shape;
    SchedulerLimits limits;
    int n, last_arrival;
    int32_t max_prompt, max_new_cap;
  };
  // Each request fits the cache alone (max_context <= blocks * block size); together they ask for far more.
  const Case cases[] = {
      {"tight", {24, 16, 64, 384}, limits_of(64, 8, 4), 80, 150, 250, 100},
      {"budget below a block", {12, 8, 4, 96}, limits_of(5, 3, 3), 60, 100, 80, 16},
      {"one token per pass", {6, 4, 8, 24}, limits_of(1, 1, 1), 30, 50, 20, 4},
      {"burst", {40, 16, 512, 640}, limits_of(256, 32, 16), 200, 0, 600, 40},
      {"short prompts, long generations", {16, 8, 32, 64}, limits_of(32, 6, 6), 100, 50, 16, 48},
  };
  for (const Case& c : cases) {
    for (uint64_t seed : {1ull, 2ull, 3ull}) {
      const auto trace = random_trace(seed, c.n, c.last_arrival, c.max_prompt, c.max_new_cap, c.shape.max_context);
      int64_t demand = 0;
      for (const TraceRequest& t : trace) demand += t.prompt + t.max_new;
      for (Policy p : kPolicies) {
        SCOPED_TRACE(fmt::format("{} seed {} {}", c.name, seed, policy_name(p)));
        LoopSim sim(p, c.limits, c.shape, trace);
        // A pass runs at least one token or preempts, so with no recompute demand passes would do after the last
        // arrival; twice that leaves room for recompute (these traces need under 0.3x).
        sim.run(c.last_arrival + static_cast<int32_t>(2 * demand));
        ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
        expect_all_finished(sim);
        if (p == Policy::splitfuse && std::string(c.name) == "tight") {
          // The trace must press on the cache, or it proves little.
          EXPECT_GT(sim.preemptions(), 0);
          EXPECT_GT(sim.splits(), 0);
        }
      }
    }
  }
}

TEST(Scheduler, NoPolicyStarvesALongPromptBehindAStreamOfShortOnes) {
  // A 120-token prompt arrives behind three short requests; then two short requests (8 tokens, 4 new) arrive every
  // pass for 600 passes. Blocks of 16, 16 blocks: the long one needs 9, and a scheduler that let later prompts
  // skip past it would keep the cache full of short ones for the whole stream. First come first served admits it
  // once the requests ahead of it drain: it must finish long before the stream ends.
  std::vector<TraceRequest> trace = {{0, 8, 4}, {0, 8, 4}, {0, 8, 4}, {0, 120, 20}};
  for (int32_t pass = 1; pass <= 600; ++pass) trace.insert(trace.end(), 2, TraceRequest{pass, 8, 4});
  for (Policy p : kPolicies) {
    SCOPED_TRACE(policy_name(p));
    LoopSim sim(p, limits_of(32, 16, 4), {16, 16, 64, 256}, trace);
    sim.run(100000);
    ASSERT_TRUE(sim.violations().empty()) << first_violations(sim);
    expect_all_finished(sim);
    EXPECT_LT(sim.request(4).finish_pass, 200) << "the long prompt was starved";
  }
}

// ---- the KV arithmetic the policies rely on ----

TEST(BlockedAllocator, AllocFreeRoundTripReturnsEveryBlock) {
  BlockedAllocator a(4);
  std::vector<int32_t> got;
  a.allocate(3, got);
  EXPECT_EQ(a.free_blocks(), 1);
  a.free(got);
  EXPECT_EQ(a.free_blocks(), 4);
  got.clear();
  a.allocate(4, got);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(a.free_blocks(), 0);
  EXPECT_THROW(a.allocate(1, got), ds::Error);
  EXPECT_THROW(BlockedAllocator(0), ds::ConfigError);
}

TEST(BlockedAllocator, DoubleFreeAndInvalidIdThrowAndFreeNothing) {
  BlockedAllocator a(4);
  std::vector<int32_t> got;
  a.allocate(2, got);  // two used, two free
  const int32_t used = got[0];
  a.free(std::vector<int32_t>{got[1]});
  EXPECT_THROW(a.free(std::vector<int32_t>{got[1]}), ds::Error);           // freed twice
  EXPECT_THROW(a.free(std::vector<int32_t>{used, used}), ds::Error);       // twice in one call
  EXPECT_THROW(a.free(std::vector<int32_t>{used, -1}), ds::Error);         // out of range
  EXPECT_THROW(a.free(std::vector<int32_t>{used, 4}), ds::Error);          // out of range
  EXPECT_EQ(a.free_blocks(), 3);  // the failed calls freed nothing, `used` included
  a.free(std::vector<int32_t>{used});
  EXPECT_EQ(a.free_blocks(), 4);
  // A call refused part-way (the duplicate is found after the first block was pushed) leaves the list whole.
  got.clear();
  a.allocate(3, got);
  EXPECT_THROW(a.free(std::vector<int32_t>{got[0], got[1], got[0]}), ds::Error);
  EXPECT_EQ(a.free_blocks(), 1);
  a.free(got);
  std::vector<int32_t> all;
  a.allocate(4, all);
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<int32_t>{0, 1, 2, 3}));
}

TEST(KvCache, RefusedReservationLeavesNoTrace) {
  KvStateManager kv(2, 4, 16, 16);  // 8 slots
  EXPECT_THROW(kv.reserve(7, 9), ds::Error);   // 3 blocks, 2 free
  EXPECT_THROW(kv.reserve(8, 17), ds::Error);  // beyond the context
  EXPECT_EQ(kv.find(7), nullptr);
  EXPECT_EQ(kv.find(8), nullptr);
  EXPECT_EQ(kv.tracked_sequences(), 0);
  EXPECT_EQ(kv.free_blocks(), 2);
}

TEST(KvCache, QueryFollowsTheBlockFormula) {
  // Blocks of 4, max_context 16. req = ceil((seen + asked) / 4) - allocated; if req > max_blocks, tokens =
  // (allocated + max_blocks) * 4 - seen.
  KvStateManager kv(8, 4, 16, 16);
  auto q = [&](uint64_t uid, int32_t asked, int32_t max_blocks) {
    const KvQuery r = kv.query(uid, asked, max_blocks);
    return std::make_pair(r.tokens, r.blocks);
  };
  // A new uid: seen 0, allocated 0.
  EXPECT_EQ(q(1, 10, 5), std::make_pair(10, 3));  // ceil(10/4) = 3 <= 5
  EXPECT_EQ(q(1, 10, 2), std::make_pair(8, 2));   // 3 > 2: (0 + 2) * 4 - 0 = 8 tokens in 2 blocks
  EXPECT_EQ(q(1, 10, 0), std::make_pair(0, 0));
  EXPECT_EQ(kv.remaining_block_capacity(1), 0);
  // seen 5 in 2 blocks: 3 slots left.
  fill(kv, 1, 5);
  EXPECT_EQ(kv.remaining_block_capacity(1), 3);
  EXPECT_EQ(q(1, 3, 0), std::make_pair(3, 0));    // ceil(8/4) - 2 = 0
  EXPECT_EQ(q(1, 4, 0), std::make_pair(3, 0));    // ceil(9/4) - 2 = 1 > 0: 2 * 4 - 5 = 3
  EXPECT_EQ(q(1, 9, 1), std::make_pair(7, 1));    // ceil(14/4) - 2 = 2 > 1: 3 * 4 - 5 = 7 in 1 block
  EXPECT_EQ(q(1, 20, 100), std::make_pair(11, 2));  // capped at 16 - 5 = 11: ceil(16/4) - 2 = 2
}
