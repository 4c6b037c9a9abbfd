// The serving loop's bookkeeping: one Active per request in arrival order, the scheduler's plan applied to the
// engine, tokens sampled and turned into events. A failure that belongs to one request (a sampler error, a bad
// token for the tokenizer) ends that request only; a failed forward pass ends every request in it.
#include "ds/inference/serving_loop.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/data/bpe_tokenizer.h"

namespace ds::inference {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::none: return "";
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "";
}

// One request: its sink, and how many of its sequences are still open.
struct ServingLoop::Group {
  EventSink sink;
  uint64_t request = 0;  // the uid submit returned (its first sequence's)
  int32_t open = 1;
};

// The sampling of a request's sequence `index`: a client's seed moves along by the index, so a seeded request
// repeats and its sequences differ (without one, each sequence has the server's stream for its own uid).
static SamplingParams sequence_sampling(const SamplingParams& s, int32_t index) {
  SamplingParams out = s;
  if (out.seed) *out.seed += static_cast<uint64_t>(index);
  return out;
}

struct ServingLoop::Active {
  Active(uint64_t uid, GenerationRequest r, uint64_t seed, const data::BpeTokenizer* tok)
      : uid(uid), prompt(std::move(r.prompt)), pending(prompt), sampling(std::move(r.sampling)),
        sampler(sampling, seed), text(tok, sampling.stop),
        group(std::make_shared<Group>(Group{std::move(r.sink), uid, 1})), arrival(Clock::now()) {}
  // Sequence `index` of first's request.
  Active(uint64_t uid, const Active& first, int32_t index, uint64_t seed, const data::BpeTokenizer* tok)
      : uid(uid), index(index), prompt(first.prompt), pending(prompt), sampling(sequence_sampling(first.sampling, index)),
        sampler(sampling, seed), text(tok, sampling.stop), group(first.group),
        arrival(first.arrival) {}
  uint64_t uid;
  int32_t index = 0;
  bool forked = false;  // the first sequence has made its siblings
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  std::vector<int32_t> pending;  // to run next: the (rest of the) prompt, or the last sampled token
  bool decoding = false;
  SamplingParams sampling;
  Sampler sampler;
  TextStream text;
  std::shared_ptr<Group> group;
  Clock::time_point arrival, last_token;
  // With sampling.prompt_logprobs: entry k is prompt token k + 1's, filled as the prompt's passes run (a
  // recompute after preemption finds them filled); handed over once, with the first event.
  std::vector<TokenLogprob> prompt_lp;
  bool prompt_lp_sent = false;
  bool wants_prompt_rows() const {
    return index == 0 && sampling.prompt_logprobs && prompt_lp.size() + 1 < prompt.size();
  }
};

ServingLoop::ServingLoop(InferenceEngine& engine, std::unique_ptr<Scheduler> scheduler,
                         const data::BpeTokenizer* tokenizer, LoopOptions options)
    : engine_(engine), scheduler_(std::move(scheduler)), tokenizer_(tokenizer), options_(options),
      seed_base_(options.seed ? *options.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}()),
      sample_vocab_(tokenizer ? std::min(engine.vocab_size(), tokenizer->vocab_size()) : engine.vocab_size()) {
  DS_CHECK_AS(ConfigError, options_.max_pending > 0, "[serve] max_pending must be positive, got {}",
              options_.max_pending);
  stats_.kv_blocks_free = engine_.free_blocks();
}

ServingLoop::~ServingLoop() { stop(); }

SubmitResult ServingLoop::submit(GenerationRequest request) {
  SubmitResult res;
  auto invalid = [&](std::string why) {
    res.status = SubmitStatus::invalid;
    res.error = std::move(why);
    const std::lock_guard<std::mutex> lock(mu_);
    ++stats_.requests_rejected;
    return res;
  };
  const int32_t vocab = engine_.vocab_size();
  const auto P = static_cast<int64_t>(request.prompt.size());
  if (P == 0) return invalid("[request] the prompt is empty; give at least one token");
  for (const int32_t t : request.prompt)
    if (t < 0 || t >= vocab)
      return invalid(fmt::format("[request] prompt token id {} is outside the vocabulary [0, {})", t, vocab));
  try {
    request.sampling.validate(vocab);
  } catch (const Error& e) {
    return invalid(e.what());
  }
  if (!tokenizer_ && !request.sampling.stop.empty())
    return invalid("[request] stop strings need a tokenizer, and this server has none; use stop token ids");
  const int64_t total = P + request.sampling.max_tokens;
  if (total > engine_.max_context())
    return invalid(fmt::format("[request] the prompt has {} tokens and max_tokens is {}: {} in all, more than the "
                               "model's context of {} tokens; shorten the prompt or lower max_tokens",
                               P, request.sampling.max_tokens, total, engine_.max_context()));
  const int64_t bs = engine_.kv_state().kv_block_size();
  const int64_t blocks = (total + bs - 1) / bs;
  if (blocks > engine_.kv_state().kv_block_count())
    return invalid(fmt::format("[request] the prompt and max_tokens need {} tokens ({} KV blocks) but the whole KV "
                               "cache holds {} blocks of {} tokens; lower max_tokens or give the server more KV "
                               "memory", total, blocks, engine_.kv_state().kv_block_count(), bs));
  {
    const std::lock_guard<std::mutex> lock(mu_);
    if (stop_) {
      ++stats_.requests_rejected;
      res.status = SubmitStatus::stopping;
      res.error = "[serve] the server is shutting down; retry against another replica or later";
      return res;
    }
    if (pending_count_ >= options_.max_pending) {
      ++stats_.requests_rejected;
      res.status = SubmitStatus::queue_full;
      res.error = fmt::format("[serve] the server is at its limit of {} queued and running requests; retry later",
                              options_.max_pending);
      return res;
    }
    res.uid = next_uid_++;
    const uint64_t seed = seed_base_ ^ (res.uid * 0x9E3779B97F4A7C15ull);
    incoming_.push_back(std::make_unique<Active>(res.uid, std::move(request), seed, tokenizer_));
    ++pending_count_;
    ++stats_.requests_accepted;
    ++stats_.waiting;
    stats_.prompt_tokens += P;
  }
  res.status = SubmitStatus::accepted;
  wake_.notify_one();
  return res;
}

void ServingLoop::cancel(uint64_t uid) {
  {
    const std::lock_guard<std::mutex> lock(mu_);
    cancels_.insert(uid);
  }
  wake_.notify_one();
}

void ServingLoop::admit_new() {
  std::unordered_set<uint64_t> cancels;
  {
    const std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      active_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    cancels.swap(cancels_);
  }
  if (cancels.empty()) return;
  for (auto& a : active_) {
    if (!a || !cancels.contains(a->group->request)) continue;
    GenerationEvent ev;
    finish(*a, FinishReason::cancelled, ev);
  }
  std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return !a; });
  const std::lock_guard<std::mutex> lock(mu_);
  stats_.kv_blocks_used = engine_.kv_state().used_blocks();
  stats_.kv_blocks_free = engine_.free_blocks();
}

// Ends a request: frees its KV, tells its sink, and releases the entry (active_ is compacted by the caller).
void ServingLoop::finish(Active& a, FinishReason reason, GenerationEvent& ev) {
  engine_.flush(a.uid);
  ev.uid = a.group->request;
  ev.index = a.index;
  ev.finish = reason;
  ev.prompt_tokens = static_cast<int32_t>(a.prompt.size());
  ev.completion_tokens = static_cast<int32_t>(a.generated.size());
  if (reason == FinishReason::length) ev.text += a.text.finish();
  const std::shared_ptr<Group> group = a.group;
  ev.request_done = --group->open == 0;
  {
    const std::lock_guard<std::mutex> lock(mu_);
    if (a.generated.empty()) --stats_.waiting; else --stats_.running;
    if (ev.request_done) {
      --pending_count_;
      if (reason == FinishReason::cancelled) ++stats_.requests_cancelled;
      else ++stats_.requests_finished;
    }
    stats_.kv_blocks_used = engine_.kv_state().used_blocks();
    stats_.kv_blocks_free = engine_.free_blocks();
  }
  for (auto& p : active_)
    if (p.get() == &a) p.reset();  // `a` is gone from here on
  if (group->sink) group->sink(ev);
  if (ev.request_done) group->sink = nullptr;
}

std::vector<ServingLoop::Active*> ServingLoop::fork_siblings(Active& first) {
  first.forked = true;
  std::vector<Active*> out;
  for (int32_t i = 1; i < first.sampling.n; ++i) {
    uint64_t uid = 0;
    {
      const std::lock_guard<std::mutex> lock(mu_);
      uid = next_uid_++;
    }
    auto sib = std::make_unique<Active>(uid, first, i, seed_base_ ^ (uid * 0x9E3779B97F4A7C15ull), tokenizer_);
    ++first.group->open;
    // Sharing the prompt's blocks needs the engine's copy-on-write and a free sequence slot; otherwise the sibling
    // runs the prompt itself.
    const KvStateManager& kv = engine_.kv_state();
    const bool share = engine_.can_fork() && kv.tracked_sequences() < kv.max_tracked_sequences();
    if (share) {
      engine_.fork(first.uid, uid);
      sib->pending.clear();
      out.push_back(sib.get());
    }
    {
      const std::lock_guard<std::mutex> lock(mu_);
      ++stats_.waiting;  // until its first token, like any sequence
    }
    active_.push_back(std::move(sib));
  }
  return out;
}

void ServingLoop::preempt(uint64_t uid) {
  for (auto& a : active_) {
    if (a->uid != uid) continue;
    engine_.flush(uid);
    a->pending = a->prompt;
    a->pending.insert(a->pending.end(), a->generated.begin(), a->generated.end());
    a->decoding = false;
    const std::lock_guard<std::mutex> lock(mu_);
    ++stats_.preemptions;
    return;
  }
  DS_ASSERT(false, "the scheduler preempted unknown request {}", uid);
}

void ServingLoop::deliver(Active& a, int32_t t, TokenLogprob logprob, Clock::time_point now) {
  const bool first = a.generated.empty();
  a.generated.push_back(t);
  a.pending.assign(1, t);
  a.decoding = true;
  {
    const std::lock_guard<std::mutex> lock(mu_);
    ++stats_.completion_tokens;  // counted before the sink hears of it
    if (first) {
      stats_.time_to_first_token_s.observe(std::chrono::duration<double>(now - a.arrival).count());
      --stats_.waiting;
      ++stats_.running;
    } else {
      stats_.time_per_output_token_s.observe(std::chrono::duration<double>(now - a.last_token).count());
    }
  }
  a.last_token = now;

  GenerationEvent ev;
  ev.uid = a.group->request;
  ev.index = a.index;
  ev.tokens.push_back(t);
  if (a.sampling.logprobs >= 0) ev.logprobs.push_back(std::move(logprob));
  if (a.index == 0 && a.sampling.prompt_logprobs && !a.prompt_lp_sent) {
    ev.prompt_logprobs = a.prompt_lp;
    a.prompt_lp_sent = true;
  }
  ev.prompt_tokens = static_cast<int32_t>(a.prompt.size());
  ev.completion_tokens = static_cast<int32_t>(a.generated.size());
  FinishReason reason = FinishReason::none;
  const auto& ids = a.sampling.stop_token_ids;
  if (std::find(ids.begin(), ids.end(), t) != ids.end() ||
      (!a.sampling.ignore_eos && tokenizer_ && t == tokenizer_->eot_token())) {
    reason = FinishReason::stop;
    ev.text = a.text.finish();
  } else {
    TextStream::Delta d = a.text.push(t);
    ev.text = std::move(d.text);
    if (d.stopped) reason = FinishReason::stop;
    else if (static_cast<int32_t>(a.generated.size()) >= a.sampling.max_tokens) reason = FinishReason::length;
  }
  if (reason != FinishReason::none) {
    finish(a, reason, ev);
  } else if (a.group->sink) {
    a.group->sink(ev);
  }
}

bool ServingLoop::step() {
  const auto step_start = Clock::now();
  admit_new();
  if (active_.empty()) return false;

  queue_view_.clear();
  for (const auto& a : active_)
    queue_view_.push_back({a->uid, static_cast<int32_t>(a->pending.size()), a->decoding,
                           a->sampling.max_tokens - static_cast<int32_t>(a->generated.size())});
  const Plan plan = scheduler_->plan(queue_view_, engine_.kv_state());
  if (plan.preempt) {
    preempt(*plan.preempt);
    const std::lock_guard<std::mutex> lock(mu_);
    stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - step_start).count();
    return true;
  }
  if (plan.chunks.empty()) {
    // Nothing fits and nothing holds KV that could be released: the oldest request can never run (submit checks
    // the cache's capacity, so this is a policy's limit, e.g. the static policy's budget).
    const Active& first = *active_.front();
    const std::string why = fmt::format(
        "[serve] the {} policy cannot place request {} ({} tokens to run, {} free KV blocks of {} tokens, a budget "
        "of {} tokens per pass); raise --token-budget or --kv-memory", policy_name(scheduler_->policy()), first.uid,
        first.pending.size(), engine_.free_blocks(), engine_.kv_state().kv_block_size(),
        scheduler_->limits().token_budget);
    log_warning("{}", why);
    GenerationEvent ev;
    ev.error = why;
    finish(*active_.front(), FinishReason::error, ev);
    std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return !a; });
    return true;
  }

  std::vector<Active*> chosen;
  std::vector<uint64_t> uids;
  std::vector<std::span<const int32_t>> tokens;
  std::vector<int32_t> seen;        // each sequence's position before this pass
  std::vector<uint8_t> all_logits;  // a row for every token: the prompt's log-probabilities
  bool any_all = false;
  int64_t pass_tokens = 0;
  for (const Chunk& c : plan.chunks) {
    const auto it = std::find_if(active_.begin(), active_.end(), [&](const auto& a) { return a->uid == c.uid; });
    DS_ASSERT(it != active_.end() && c.tokens > 0 && c.tokens <= static_cast<int32_t>((*it)->pending.size()),
              "the scheduler planned {} tokens of request {}", c.tokens, c.uid);
    chosen.push_back(it->get());
    uids.push_back(c.uid);
    tokens.emplace_back((*it)->pending.data(), static_cast<size_t>(c.tokens));
    const SequenceKv* kv = engine_.kv_state().find(c.uid);
    seen.push_back(kv ? kv->seen_tokens : 0);
    all_logits.push_back((*it)->wants_prompt_rows() ? 1 : 0);
    any_all |= all_logits.back() != 0;
    pass_tokens += c.tokens;
  }
  const auto put_start = Clock::now();
  std::span<const float> logits;
  try {
    logits = engine_.put(uids, tokens, any_all ? std::span<const uint8_t>(all_logits) : std::span<const uint8_t>());
  } catch (const DeviceError& e) {
    // Only the requests that asked for prompt rows are refused; the rest run in the next pass.
    for (size_t i = 0; i < chosen.size(); ++i) {
      if (!all_logits[i]) continue;
      GenerationEvent ev;
      ev.error = e.what();
      finish(*chosen[i], FinishReason::error, ev);
    }
    std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return !a; });
    return true;
  }
  const auto now = Clock::now();
  const auto V = static_cast<size_t>(engine_.vocab_size());
  const std::span<const int32_t> rows = engine_.rows();
  auto row = [&](int32_t r) { return logits.subspan(static_cast<size_t>(r) * V, static_cast<size_t>(sample_vocab_)); };

  // The prompt's log-probabilities: the row of position p scores the prompt token at p + 1.
  for (size_t i = 0; i < chosen.size(); ++i) {
    if (!all_logits[i]) continue;
    Active& a = *chosen[i];
    for (int32_t j = 0; j < static_cast<int32_t>(tokens[i].size()); ++j) {
      const auto target = static_cast<size_t>(seen[i] + j + 1);
      if (target != a.prompt_lp.size() + 1 || target >= a.prompt.size()) continue;
      const int32_t t = a.prompt[target];
      const std::span<const float> r = t < sample_vocab_ ? row(rows[i] + j)
                                                          : logits.subspan(static_cast<size_t>(rows[i] + j) * V, V);
      a.prompt_lp.push_back(token_logprob(r, t, a.sampling.logprobs));
    }
  }

  // Every sequence whose pending tokens are all in the cache now gets its next token. The samplers are independent
  // (each request has its own state and random stream), so they run in parallel over the model's threads: a pass
  // of 16 sequences sampling with top_p (0.1-0.2 ms each, bm_kernels --only sampling) would otherwise spend more
  // time sampling than in the forward of a small model.
  struct Draw {
    int32_t token = -1;  // -1: nothing to sample (a split prompt)
    std::string error;   // this request's failure only (e.g. non-finite logits)
    TokenLogprob logprob;
  };
  std::vector<Draw> draws(chosen.size());
  std::vector<int> to_sample;
  std::vector<Active*> scored;  // max_tokens 0: the prompt is scored, nothing is generated
  for (size_t i = 0; i < chosen.size(); ++i) {
    Active& a = *chosen[i];
    a.pending.erase(a.pending.begin(), a.pending.begin() + plan.chunks[i].tokens);
    if (!a.pending.empty()) continue;
    if (a.sampling.max_tokens == 0) scored.push_back(&a);
    else to_sample.push_back(static_cast<int>(i));
  }
  const int n_sample = static_cast<int>(to_sample.size());
#pragma omp parallel for schedule(dynamic, 1) if (n_sample > 1)
  for (int k = 0; k < n_sample; ++k) {
    const auto i = static_cast<size_t>(to_sample[static_cast<size_t>(k)]);
    try {
      const std::span<const float> r = row(rows[i + 1] - 1);
      draws[i].token = chosen[i]->sampler.sample(r);
      if (chosen[i]->sampling.logprobs >= 0) {
        draws[i].logprob = token_logprob(r, draws[i].token, chosen[i]->sampling.logprobs);
      }
    } catch (const std::exception& e) {  // nothing may leave an OpenMP region
      draws[i].error = e.what();
      if (draws[i].error.empty()) draws[i].error = "[serve] sampling failed";
    } catch (...) {
      draws[i].error = "[serve] sampling failed";
    }
  }

  for (size_t i = 0; i < chosen.size(); ++i) {
    Active& a = *chosen[i];
    if (!draws[i].error.empty()) {
      GenerationEvent ev;
      ev.error = std::move(draws[i].error);
      finish(a, FinishReason::error, ev);
      continue;
    }
    if (draws[i].token < 0) continue;
    // The request's other sequences branch off here: each samples its first token from the same row.
    std::vector<Active*> siblings;
    if (a.index == 0 && !a.forked && a.sampling.n > 1) siblings = fork_siblings(a);
    const std::span<const float> r = row(rows[i + 1] - 1);
    deliver(a, draws[i].token, std::move(draws[i].logprob), now);
    for (Active* sib : siblings) {
      try {
        const int32_t t = sib->sampler.sample(r);
        deliver(*sib, t, sib->sampling.logprobs >= 0 ? token_logprob(r, t, sib->sampling.logprobs) : TokenLogprob{},
                now);
      } catch (const Error& e) {
        GenerationEvent ev;
        ev.error = e.what();
        finish(*sib, FinishReason::error, ev);
      }
    }
  }
  for (Active* a : scored) {
    GenerationEvent ev;
    ev.prompt_logprobs = std::move(a->prompt_lp);
    finish(*a, FinishReason::length, ev);
  }
  std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return !a; });
  {
    const std::lock_guard<std::mutex> lock(mu_);
    ++stats_.passes;
    stats_.pass_tokens += pass_tokens;
    stats_.forward_seconds += std::chrono::duration<double>(now - put_start).count();
    stats_.busy_seconds += std::chrono::duration<double>(Clock::now() - step_start).count();
    stats_.kv_blocks_used = engine_.kv_state().used_blocks();
    stats_.kv_blocks_free = engine_.free_blocks();
  }
  return true;
}

void ServingLoop::run_until_idle() {
  while (step()) {
  }
}

void ServingLoop::start() {
  DS_ASSERT(!thread_.joinable(), "serving loop started twice");
  stop_ = false;
  thread_ = std::thread([this] {
    if (options_.threads > 0) omp_set_num_threads(options_.threads);  // a per-thread setting in OpenMP
    while (!stop_) {
      bool worked = false;
      try {
        worked = step();
      } catch (const std::exception& e) {
        // A failed pass leaves the cache state of its sequences unknown: end every open request with the error.
        log_warning("[serve] a forward pass failed: {}", e.what());
        for (auto& a : active_) {
          if (!a) continue;
          GenerationEvent ev;
          ev.error = e.what();
          finish(*a, FinishReason::error, ev);
        }
        active_.clear();
        worked = true;
      }
      if (worked) continue;
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !incoming_.empty() || !cancels_.empty(); });
    }
  });
}

void ServingLoop::stop() {
  {
    const std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  admit_new();
  for (auto& a : active_) {
    if (!a) continue;
    GenerationEvent ev;
    finish(*a, FinishReason::cancelled, ev);
  }
  active_.clear();
}

LoopStats ServingLoop::stats() const {
  const std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace ds::inference
