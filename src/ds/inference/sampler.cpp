// Sampling and streamed text for one request (see sampler.h for the semantics).
// Sampling: the O(V) passes are vector sweeps (cpu::argmax, exp_weights, draw_index, top_k_candidates). The common
// case (no top_k, no top_p) is a sweep for the maximum, one for the weights and one for the draw, with no sort;
// top_k keeps k candidates in one sweep; top_p orders only the candidates heavy enough to be in the nucleus (the
// top_k ones, sorted, or those above a weight cut that holds top_p of the mass, bucketed by logit). Weights are
// exp((logit - max) / T) in float, summed in double; ties are broken by the lower id so the candidate order, and so
// the draw, depends only on the logits and the seed.
// Text: pending_ only ever holds a possible stop-string start (< the longest stop) plus at most three bytes of an
// unfinished UTF-8 character, so searching all of it on every push is cheap.
#include "ds/inference/sampler.h"

#include <algorithm>
#include <cmath>

#include "ds/core/error.h"
#include "ds/core/strings.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::inference {

namespace {

constexpr float kGreedyTemperature = 1e-5f;  // below this, sampling is argmax
constexpr size_t kMaxStopStrings = 5;        // OpenAI's 4, and a chat template's end marker
constexpr float kAllTokensCut = 88.0f;       // nats: e^-88 is below every nonzero weight (exp_weights zeroes < -87)

// Draws from candidates whose .first are unnormalised weights summing to total.
int32_t draw(std::span<const std::pair<float, int32_t>> cand, double total, Rng& rng) {
  DS_ASSERT(!cand.empty() && total > 0.0, "no candidate to sample from");
  const double target = static_cast<double>(rng.uniform()) * total;
  double cum = 0.0;
  for (const auto& [w, id] : cand) {
    cum += w;
    if (target < cum) return id;
  }
  // Rounding left target at or past the last sum: the last candidate with weight.
  for (size_t i = cand.size(); i-- > 0;) {
    if (cand[i].first > 0.0f) return cand[i].second;
  }
  DS_ASSERT(false, "all candidate weights are zero");
  return cand.front().second;
}

// Where s[0, end) must be cut so it does not end inside a UTF-8 character that later bytes could still complete:
// end itself, or the start of that unfinished character. Sequences that can never become valid are not held.
size_t utf8_safe_end(const std::string& s, size_t end) {
  // The unfinished character starts at most three bytes back, at the last byte that is not a continuation byte.
  size_t start = end;
  for (size_t back = 1; back <= 3 && back <= end; ++back) {
    const auto c = static_cast<unsigned char>(s[end - back]);
    if ((c & 0xC0) != 0x80) {
      start = end - back;
      break;
    }
  }
  if (start == end) return end;  // no lead byte in reach: nothing to complete
  const auto lead = static_cast<unsigned char>(s[start]);
  const size_t need = static_cast<size_t>(utf8_length(lead));
  const size_t have = end - start;
  if (need <= have) return end;  // complete (or not a lead byte at all: need == 0)
  if (have >= 2 && !utf8_valid_second(lead, static_cast<unsigned char>(s[start + 1]))) return end;  // never valid
  return start;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ SamplingParams

void SamplingParams::validate(int32_t vocab_size) const {
  DS_CHECK(max_tokens >= (prompt_logprobs ? 0 : 1), "[request] 'max_tokens' must be at least 1 (0 only to score a "
           "prompt with echo and logprobs), got {}", max_tokens);
  DS_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f,
           "[request] 'presence_penalty' must be between -2 and 2, got {}", presence_penalty);
  DS_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
           "[request] 'frequency_penalty' must be between -2 and 2, got {}", frequency_penalty);
  for (const auto& [id, bias] : logit_bias) {
    DS_CHECK(id >= 0 && id < vocab_size, "[request] 'logit_bias' keys must be token ids in [0, {}), got {}",
             vocab_size, id);
    DS_CHECK(bias >= -100.0f && bias <= 100.0f, "[request] 'logit_bias' values must be between -100 and 100, got {} "
             "for token {}", bias, id);
  }
  DS_CHECK(logprobs >= -1 && logprobs <= 20, "[request] 'logprobs' must be between 0 and 20, got {}", logprobs);
  DS_CHECK(!prompt_logprobs || logprobs >= 0, "[request] the prompt's log-probabilities need 'logprobs' set");
  DS_CHECK(n >= 1 && n <= 64, "[request] 'n' (sequences per prompt) must be between 1 and 64, got {}", n);
  DS_CHECK(temperature >= 0.0f && temperature <= 2.0f, "[request] 'temperature' must be between 0 and 2, got {}",
           temperature);
  DS_CHECK(top_k >= 0, "[request] 'top_k' must be 0 (no limit) or positive, got {}", top_k);
  DS_CHECK(top_p > 0.0f && top_p <= 1.0f, "[request] 'top_p' must be in (0, 1], got {}", top_p);
  DS_CHECK(stop.size() <= kMaxStopStrings, "[request] 'stop' may hold at most {} strings, got {}", kMaxStopStrings,
           stop.size());
  for (size_t i = 0; i < stop.size(); ++i) {
    DS_CHECK(!stop[i].empty(), "[request] 'stop' strings must not be empty, but entry {} is", i);
  }
  for (int32_t id : stop_token_ids) {
    DS_CHECK(id >= 0 && id < vocab_size, "[request] 'stop_token_ids' must be token ids in [0, {}), got {}",
             vocab_size, id);
  }
}

// ------------------------------------------------------------------------------------------------ Sampler

Sampler::Sampler(const SamplingParams& params, uint64_t default_seed)
    : temperature_(params.temperature),
      top_k_(params.top_k),
      top_p_(params.top_p),
      presence_(params.presence_penalty),
      frequency_(params.frequency_penalty),
      bias_(params.logit_bias),
      rng_(params.seed.value_or(default_seed)) {}

namespace {

// The work space of Sampler::sample: nothing in it outlives a call, so it is per thread, not per request (a
// request holds no vocabulary-sized buffer between its tokens, and the loop samples its sequences in parallel).
struct SampleScratch {
  std::vector<float> adjusted;                                  // logits after biases and penalties
  std::vector<std::pair<float, int32_t>> candidates, bucketed;  // (logit or weight, id)
  std::vector<float> weights;                                   // one per token of the vocabulary
  std::vector<int32_t> bucket_start;
  std::vector<double> bucket_mass;
  std::vector<uint8_t> bucket_sorted;
};

SampleScratch& sample_scratch() {
  thread_local SampleScratch scratch;
  return scratch;
}

// Note [Nucleus buckets]
// A small or undertrained model spreads top_p = 0.9 over thousands of tokens, and sorting them cost milliseconds
// a token (bm_kernels --only sampling, the flat top_p case). Instead the candidates go into kBuckets buckets by
// max - logit, linearly over the candidates' own range: a higher logit never lands in a later bucket and equal
// logits share one, so the buckets in order, each sorted by the candidate order, are the full sort. Only two
// buckets are ever sorted (and none whose logits are all equal: they are in id order already): the one where the
// nucleus reaches its mass, and the one the draw lands in; whole buckets before them count by their mass (summed
// in double, as the full sort's running sum, so the two agree to rounding).

// top_p without top_k: draws from the shortest prefix of the candidate order whose mass reaches `need`, among the
// tokens within `cut` nats of the largest (weight >= e^-cut, and > 0); -1 when those hold less than need, unless
// `whole` (every token is a candidate: rounding may leave their sum a hair short, and then all of them are drawn
// from). See Note [Nucleus buckets].
int32_t draw_nucleus(SampleScratch& s, Rng& rng, std::span<const float> logits, float max_logit, float cut,
                     double need, bool whole) {
  constexpr int kBuckets = 2048;
  const float tau = std::exp(-cut);
  cpu::candidates_at_least(s.candidates, logits.data(), s.weights.data(), static_cast<int32_t>(s.weights.size()), tau);
  float min_logit = max_logit;
  for (const auto& c : s.candidates) min_logit = std::min(min_logit, c.first);
  const float range = max_logit - min_logit;
  const float scale = range > 0.0f ? static_cast<float>(kBuckets) / range : 0.0f;
  auto bucket_of = [&](float logit) {  // (max - logit) >= 0: logits with weight > 0 are finite and <= max
    const float x = (max_logit - logit) * scale;
    return x < static_cast<float>(kBuckets - 1) ? static_cast<int>(x) : kBuckets - 1;
  };
  s.bucket_start.assign(kBuckets + 1, 0);
  s.bucket_mass.assign(kBuckets, 0.0);
  s.bucket_sorted.assign(kBuckets, 0);
  for (const auto& [logit, id] : s.candidates) {
    const int b = bucket_of(logit);
    ++s.bucket_start[static_cast<size_t>(b) + 1];
    s.bucket_mass[static_cast<size_t>(b)] += s.weights[static_cast<size_t>(id)];
  }
  for (int b = 0; b < kBuckets; ++b) s.bucket_start[size_t(b) + 1] += s.bucket_start[size_t(b)];
  s.bucketed.resize(s.candidates.size());
  {
    std::vector<int32_t>& next = s.bucket_start;  // filled in place, then shifted back one bucket
    for (const auto& c : s.candidates) {
      s.bucketed[static_cast<size_t>(next[static_cast<size_t>(bucket_of(c.first))]++)] = c;
    }
    for (int b = kBuckets; b > 0; --b) next[size_t(b)] = next[size_t(b) - 1];
    next[0] = 0;
  }
  auto sort_bucket = [&](int b) {
    if (s.bucket_sorted[size_t(b)]) return;
    s.bucket_sorted[size_t(b)] = 1;
    const auto first = s.bucketed.begin() + s.bucket_start[size_t(b)];
    const auto last = s.bucketed.begin() + s.bucket_start[size_t(b) + 1];
    if (std::all_of(first, last, [&](const auto& c) { return c.first == first->first; })) return;  // id order
    std::sort(first, last, cpu::candidate_before);
  };
  auto weight = [&](size_t i) { return static_cast<double>(s.weights[static_cast<size_t>(s.bucketed[i].second)]); };

  // The nucleus: whole buckets while they stay short of need, then candidates one by one.
  double cum = 0.0;
  int b = 0;
  while (b < kBuckets && cum + s.bucket_mass[size_t(b)] < need) cum += s.bucket_mass[size_t(b++)];
  size_t end = 0;  // the nucleus is s.bucketed[0, end)
  for (; b < kBuckets && cum < need; ++b) {
    sort_bucket(b);
    for (size_t i = size_t(s.bucket_start[size_t(b)]); i < size_t(s.bucket_start[size_t(b) + 1]) && cum < need; ++i) {
      cum += weight(i);
      end = i + 1;
    }
  }
  if (end == 0 || (cum < need && !whole)) return -1;

  // The draw: one uniform over the nucleus's mass, walked in candidate order.
  const double target = static_cast<double>(rng.uniform()) * cum;
  double run = 0.0;
  for (int d = 0; d < kBuckets && size_t(s.bucket_start[size_t(d)]) < end; ++d) {
    const size_t lo = size_t(s.bucket_start[size_t(d)]), hi = std::min(size_t(s.bucket_start[size_t(d) + 1]), end);
    if (hi == size_t(s.bucket_start[size_t(d) + 1]) && !(target < run + s.bucket_mass[size_t(d)])) {
      run += s.bucket_mass[size_t(d)];
      continue;
    }
    sort_bucket(d);
    for (size_t i = lo; i < hi; ++i) {
      run += weight(i);
      if (target < run) return s.bucketed[i].second;
    }
  }
  return s.bucketed[end - 1].second;  // rounding left target at or past the end: the last of the nucleus
}

}  // namespace

int32_t Sampler::sample(std::span<const float> logits) {
  const bool penalize = presence_ != 0.0f || frequency_ != 0.0f;
  if (bias_.empty() && !penalize) return draw_token(logits);
  std::vector<float>& adjusted = sample_scratch().adjusted;
  adjusted.assign(logits.begin(), logits.end());
  const auto V = static_cast<int32_t>(logits.size());
  for (const auto& [id, bias] : bias_) {
    if (id < V) adjusted[static_cast<size_t>(id)] += bias;
  }
  for (const auto& [id, n] : counts_) {
    adjusted[static_cast<size_t>(id)] -= frequency_ * static_cast<float>(n) + presence_;
  }
  const int32_t t = draw_token(adjusted);
  if (penalize) {
    auto it = std::find_if(counts_.begin(), counts_.end(), [t](const auto& c) { return c.first == t; });
    if (it == counts_.end()) counts_.emplace_back(t, 1);
    else ++it->second;
  }
  return t;
}

TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int32_t top) {
  DS_ASSERT(!logits.empty() && token >= 0 && token < static_cast<int32_t>(logits.size()),
            "token {} outside the {} logits", token, logits.size());
  const auto V = static_cast<int32_t>(logits.size());
  const float max_logit = logits[cpu::argmax(logits.data(), V)];
  double sum = 0.0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l - max_logit));
  const double lse = static_cast<double>(max_logit) + std::log(sum);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(static_cast<double>(logits[static_cast<size_t>(token)]) - lse);
  if (top > 0) {
    std::vector<std::pair<float, int32_t>>& cand = sample_scratch().candidates;
    cpu::top_k_candidates(cand, logits.data(), V, std::min(top, V));
    std::sort(cand.begin(), cand.end(), cpu::candidate_before);
    for (const auto& [logit, id] : cand) out.top.emplace_back(id, static_cast<float>(static_cast<double>(logit) - lse));
  }
  return out;
}

int32_t Sampler::draw_token(std::span<const float> logits) {
  DS_ASSERT(!logits.empty(), "sampling from empty logits");
  const auto V = static_cast<int32_t>(logits.size());
  SampleScratch& s = sample_scratch();

  // Greedy (and the maximum for the softmax): the first index of the largest logit.
  const auto best = static_cast<int32_t>(cpu::argmax(logits.data(), V));
  if (!(temperature_ >= kGreedyTemperature)) return best;
  const float max_logit = logits[static_cast<size_t>(best)];
  DS_CHECK(std::isfinite(max_logit), "[sampler] the largest logit is {}; the model produced no finite logits",
           max_logit);
  const float inv_t = 1.0f / temperature_;
  const bool limit_k = top_k_ > 0 && top_k_ < V;
  const bool limit_p = top_p_ < 1.0f;

  if (!limit_k) {  // weights over the whole vocabulary
    s.weights.resize(logits.size());
    const double total = cpu::exp_weights(s.weights.data(), logits.data(), V, max_logit, inv_t);
    if (!limit_p) {  // O(V): no ordering needed
      const int64_t id = cpu::draw_index(s.weights.data(), V, static_cast<double>(rng_.uniform()) * total);
      DS_ASSERT(id >= 0, "all candidate weights are zero");
      return static_cast<int32_t>(id);
    }
    // top_p: the nucleus is the head of the order by logit, and every token with weight >= tau is in that head, so
    // a tau whose tokens hold top_p of the mass bounds it, and only those tokens are candidates (see Note
    // [Nucleus buckets]). tau = e^-cut, the cut bisected to a quarter of a nat (about nine sweeps); every token
    // if rounding leaves the candidates short of top_p.
    const double need = static_cast<double>(top_p_) * total;
    float lo = 0.0f, hi = kAllTokensCut;  // mass(e^-hi) >= need always
    while (hi - lo > 0.25f) {
      const float mid = 0.5f * (lo + hi);
      if (cpu::mass_at_least(s.weights.data(), V, std::exp(-mid)) >= need) hi = mid;
      else lo = mid;
    }
    int32_t id = draw_nucleus(s, rng_, logits, max_logit, hi, need, false);
    if (id < 0) id = draw_nucleus(s, rng_, logits, max_logit, kAllTokensCut, need, true);
    DS_ASSERT(id >= 0, "no token has a nonzero weight");
    return id;
  }

  // top_k (then top_p over the renormalised top_k): only k candidates are weighed.
  cpu::top_k_candidates(s.candidates, logits.data(), V, top_k_);
  size_t n = s.candidates.size();
  if (limit_p) std::sort(s.candidates.begin(), s.candidates.end(), cpu::candidate_before);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    s.candidates[i].first = std::exp((s.candidates[i].first - max_logit) * inv_t);
    total += s.candidates[i].first;
  }
  if (limit_p) {  // smallest prefix (by descending probability) whose probability reaches top_p
    const double need = static_cast<double>(top_p_) * total;
    double cum = 0.0;
    size_t keep = 0;
    while (keep < n) {
      cum += s.candidates[keep].first;
      ++keep;
      if (cum >= need) break;
    }
    n = keep;
    total = cum;
  }
  return draw(std::span<const std::pair<float, int32_t>>(s.candidates.data(), n), total, rng_);
}

// ------------------------------------------------------------------------------------------------ TextStream

TextStream::TextStream(const data::BpeTokenizer* tokenizer, std::vector<std::string> stop)
    : tokenizer_(tokenizer), stop_(std::move(stop)) {
  DS_CHECK(tokenizer_ != nullptr || stop_.empty(),
           "[request] stop strings need a tokenizer to match text against, but this model has none; remove 'stop' "
           "or serve the model with a tokenizer");
  for (const auto& s : stop_) {
    DS_CHECK(!s.empty(), "[request] 'stop' strings must not be empty");
    max_stop_ = std::max(max_stop_, s.size());
  }
}

TextStream::Delta TextStream::push(int32_t token) {
  Delta out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  if (tokenizer_ == nullptr) return out;
  pending_ += tokenizer_->token_bytes(token);

  // The first stop string to occur ends the text.
  size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    out.text = pending_.substr(0, cut);
    out.stopped = true;
    pending_.clear();
    stopped_ = true;
    return out;
  }

  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  const size_t reach = std::min(pending_.size(), max_stop_ > 0 ? max_stop_ - 1 : 0);
  for (size_t len = reach; len > 0 && hold == 0; --len) {
    const std::string_view tail(pending_.data() + pending_.size() - len, len);
    for (const auto& s : stop_) {
      if (s.size() > len && s.compare(0, len, tail) == 0) {
        hold = len;
        break;
      }
    }
  }
  const size_t end = utf8_safe_end(pending_, pending_.size() - hold);
  out.text = pending_.substr(0, end);
  pending_.erase(0, end);
  return out;
}

std::string TextStream::finish() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace ds::inference
