// Sampler against probabilities computed here in double (softmax, top_k and top_p sets by a full sort), checked
// by per-bin 5-sigma bounds over many draws; TextStream on the real GPT-2 tokenizer against literal expected texts,
// text.find(stop) cuts, the longest character-boundary prefix of the decoded tokens, and an independent UTF-8
// validator for every delta.
#include "ds/inference/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::inference {
namespace {

// ------------------------------------------------------------------------------------------------ references

// softmax(logits / T) in double.
std::vector<double> softmax(const std::vector<float>& logits, double T) {
  double m = -std::numeric_limits<double>::infinity();
  for (float l : logits) m = std::max(m, double(l));
  std::vector<double> p(logits.size());
  double z = 0.0;
  for (size_t i = 0; i < p.size(); ++i) z += p[i] = std::exp((double(logits[i]) - m) / T);
  for (double& x : p) x /= z;
  return p;
}

// Ids by descending probability (then ascending id), by a full sort.
std::vector<int> by_probability(const std::vector<double>& p) {
  std::vector<int> ids(p.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return p[a] > p[b]; });
  return ids;
}

// The distribution restricted to `keep` and renormalised.
std::vector<double> restrict_to(const std::vector<double>& p, const std::vector<int>& keep) {
  std::vector<double> q(p.size(), 0.0);
  double z = 0.0;
  for (int i : keep) z += p[i];
  for (int i : keep) q[i] = p[i] / z;
  return q;
}

std::vector<int> top_k_set(const std::vector<double>& p, int k) {
  auto ids = by_probability(p);
  ids.resize(k);
  return ids;
}

// Smallest descending prefix reaching top_p; asserts the threshold is not within `margin` of a prefix sum, so
// float rounding in the sampler cannot pick a different set.
std::vector<int> top_p_set(const std::vector<double>& p, const std::vector<int>& among, double top_p) {
  std::vector<int> ids = among;
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return p[a] > p[b]; });
  double z = 0.0;
  for (int i : ids) z += p[i];
  std::vector<int> keep;
  double cum = 0.0;
  for (int i : ids) {
    cum += p[i] / z;
    keep.push_back(i);
    EXPECT_GT(std::abs(cum - top_p), 1e-4) << "test threshold too close to a prefix sum";
    if (cum >= top_p) break;
  }
  return keep;
}

std::vector<int> all_ids(size_t n) {
  std::vector<int> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

std::vector<int64_t> histogram(Sampler& s, const std::vector<float>& logits, int draws) {
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    const int32_t id = s.sample(logits);
    EXPECT_TRUE(id >= 0 && id < int32_t(logits.size())) << id;
    if (id >= 0 && id < int32_t(logits.size())) ++counts[id];
  }
  return counts;
}

// Every bin within 5 standard deviations of its binomial expectation; bins of probability 0 stay empty.
void expect_matches(const std::vector<int64_t>& counts, const std::vector<double>& q, int draws) {
  ASSERT_EQ(counts.size(), q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the allowed set";
      continue;
    }
    const double mean = draws * q[i];
    const double sigma = std::sqrt(draws * q[i] * (1.0 - q[i]));
    EXPECT_LE(std::abs(double(counts[i]) - mean), 5.0 * sigma + 1.0)
        << "token " << i << ": " << counts[i] << " draws, expected " << mean << " +- " << sigma;
  }
}

// Distinct, well-separated probabilities: at 100k draws a wrong temperature or set moves bins by many sigma.
const std::vector<float> kLogits = {1.0f, 3.0f, -0.5f, 2.2f, 0.3f, 2.6f, -2.0f, 1.6f, 0.0f, -1.0f};
constexpr int kDraws = 100000;

// ------------------------------------------------------------------------------------------------ Sampler

TEST(Sampler, GreedyPicksArgmaxAndLowestTie) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, 1);
  EXPECT_EQ(s.sample(kLogits), 1);
  const std::vector<float> ties = {0.5f, 4.0f, -1.0f, 4.0f, 4.0f, 3.999f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(ties), 1);
  const std::vector<float> first = {7.0f, 7.0f, 7.0f};
  EXPECT_EQ(s.sample(first), 0);
  const std::vector<float> last = {-3.0f, -2.0f, -1.0f};
  EXPECT_EQ(s.sample(last), 2);
  // A temperature below 1e-5 is greedy too, even with a top_p that would allow other tokens.
  p.temperature = 1e-6f;
  p.top_p = 0.9f;
  Sampler tiny(p, 1);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(tiny.sample(ties), 1);
}

TEST(Sampler, TemperatureFrequenciesMatchSoftmax) {
  for (float T : {1.0f, 0.6f, 1.7f}) {
    SCOPED_TRACE(T);
    SamplingParams p;
    p.temperature = T;
    Sampler s(p, 42);
    expect_matches(histogram(s, kLogits, kDraws), softmax(kLogits, T), kDraws);
  }
}

TEST(Sampler, NegativeInfinityLogitsAreNeverSampled) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> logits = {ninf, 0.5f, ninf, 0.0f, ninf, -0.5f};
  SamplingParams p;
  p.temperature = 1.3f;
  Sampler s(p, 9);
  expect_matches(histogram(s, logits, kDraws), softmax(logits, 1.3), kDraws);
}

TEST(Sampler, TopKStaysInTopKWithRenormalisedProbabilities) {
  for (int k : {1, 3, 6}) {
    SCOPED_TRACE(k);
    SamplingParams p;
    p.temperature = 0.9f;
    p.top_k = k;
    Sampler s(p, 7);
    const auto probs = softmax(kLogits, 0.9);
    expect_matches(histogram(s, kLogits, kDraws), restrict_to(probs, top_k_set(probs, k)), kDraws);
  }
}

TEST(Sampler, TopKAtLeastVocabIsNoLimit) {
  SamplingParams p;
  p.top_k = int32_t(kLogits.size()) + 5;
  Sampler s(p, 3);
  expect_matches(histogram(s, kLogits, kDraws), softmax(kLogits, 1.0), kDraws);
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingP) {
  for (float top_p : {0.5f, 0.8f, 0.95f}) {
    SCOPED_TRACE(top_p);
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = top_p;
    Sampler s(p, 11);
    const auto probs = softmax(kLogits, 1.0);
    const auto keep = top_p_set(probs, all_ids(probs.size()), top_p);
    ASSERT_GT(keep.size(), 1u);
    ASSERT_LT(keep.size(), probs.size());
    expect_matches(histogram(s, kLogits, kDraws), restrict_to(probs, keep), kDraws);
  }
}

TEST(Sampler, TinyTopPAlwaysKeepsTheMostLikelyToken) {
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_p = 1e-6f;
  Sampler s(p, 5);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(s.sample(kLogits), 1);
}

TEST(Sampler, TopPAppliesToTheRenormalisedTopK) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 5;
  p.top_p = 0.7f;
  Sampler s(p, 13);
  const auto probs = softmax(kLogits, 0.8);
  const auto keep = top_p_set(probs, top_k_set(probs, 5), 0.7);
  // Over the unrestricted distribution the prefix reaching 0.7 is a different set, so the order matters here.
  ASSERT_NE(keep.size(), top_p_set(probs, all_ids(probs.size()), 0.7).size());
  expect_matches(histogram(s, kLogits, kDraws), restrict_to(probs, keep), kDraws);
}

TEST(Sampler, LargeVocabularyFollowsSoftmax) {
  // GPT-2's vocabulary size; a few strong logits over a flat floor, so the bins are large enough to count.
  std::vector<float> logits(50257, 0.0f);
  logits[17] = 9.0f;
  logits[50256] = 8.5f;
  logits[30000] = 8.0f;
  SamplingParams p;
  p.temperature = 1.0f;
  Sampler s(p, 21);
  const auto probs = softmax(logits, 1.0);
  const int draws = 10000;
  int64_t c17 = 0, c_eot = 0, c30000 = 0, rest = 0;
  for (int i = 0; i < draws; ++i) {
    const int32_t id = s.sample(logits);
    if (id == 17) ++c17; else if (id == 50256) ++c_eot; else if (id == 30000) ++c30000; else ++rest;
  }
  const double p_rest = 1.0 - probs[17] - probs[50256] - probs[30000];
  expect_matches({c17, c_eot, c30000, rest}, {probs[17], probs[50256], probs[30000], p_rest}, draws);
}

// top_p over GPT-2's vocabulary with broad logits (the nucleus holds thousands of tokens), sharp ones and tied ones,
// against the plain algorithm written here: every token sorted by logit (ties by id), weights exp((l - max) / T),
// the smallest prefix reaching top_p of the total, and the draw along it with the same seeded uniforms. The sampler
// sorts only the tokens above a weight cut, so the same tokens must come out, draw for draw.
TEST(Sampler, TopPOverTheVocabularyDrawsAsAFullSort) {
  // -1: logits rounded to quarters, so many tie (broken by id); without the peak, ties at the maximum too. A
  // near-flat spread puts thousands of tokens in each of many buckets of the sampler's nucleus search.
  for (auto [spread, peak] : {std::pair{3.0f, true}, std::pair{0.5f, true}, std::pair{-1.0f, true},
                              std::pair{-1.0f, false}, std::pair{0.002f, false}}) {
    SCOPED_TRACE(spread);
    SCOPED_TRACE(peak);
    std::vector<float> logits(50257);
    Rng values(5);
    for (float& l : logits) l = spread > 0 ? spread * values.normal() : std::round(8.0f * values.normal()) / 4.0f;
    if (peak) logits[123] = 12.0f;  // a sharp peak matters when the spread is small
    for (float top_p : {0.9f, 0.5f, 0.99f, 0.001f}) {
      SCOPED_TRACE(top_p);
      SamplingParams p;
      p.temperature = 0.8f;
      p.top_p = top_p;
      p.seed = 77;
      Sampler s(p, 1);
      std::vector<std::pair<float, int32_t>> order;
      for (int32_t i = 0; i < 50257; ++i) order.emplace_back(logits[size_t(i)], i);
      std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      // The weights from the sampler's own exp sweep (tested against std::exp in the kernel tests): the draws sit
      // on boundaries a millionth of the mass apart, finer than two exp implementations agree.
      std::vector<float> by_id(logits.size());
      ds::cpu::exp_weights(by_id.data(), logits.data(), int64_t(logits.size()), order[0].first, 1.0f / 0.8f);
      std::vector<double> w(order.size());
      double total = 0;
      for (size_t i = 0; i < order.size(); ++i) total += w[i] = by_id[size_t(order[i].second)];
      double cum = 0;
      size_t keep = 0;
      while (cum < top_p * total) cum += w[keep++];
      Rng rng(77);
      for (int draw = 0; draw < 300; ++draw) {
        const double target = double(rng.uniform()) * cum;
        double run = 0;
        size_t i = 0;
        while (i + 1 < keep && !(target < run + w[i])) run += w[i++];
        const int32_t got = s.sample(logits);
        ASSERT_EQ(got, order[i].second) << "draw " << draw << " (nucleus of " << keep << ")";
      }
    }
  }
}

// The same, over many random distributions: vocabularies of 1 to 50,257 tokens, temperatures from 1e-5 to 2,
// top_p from 1e-6 to just below 1 (small ones end the nucleus in the first few buckets of a flat distribution),
// logits broad, flat, offset, tied, partly -inf or a ramp. Each case's first draws must be the full sort's; a
// wrong bucket boundary or an unsorted bucket shows up in some of them.
TEST(Sampler, TopPMatchesAFullSortOverManyDistributions) {
  Rng gen(12345);
  int failed = 0;
  for (int c = 0; c < 1600 && failed < 5; ++c) {
    const int sizes[] = {1, 3, 9, 17, 100, 1000, 5000};
    const int V = c % 97 == 0 ? 50257 : sizes[gen.next_u64() % 7];
    const float temperatures[] = {1e-5f, 3e-5f, 1e-3f, 0.05f, 0.3f, 0.8f, 1.0f, 2.0f};
    const float top_ps[] = {1e-6f, 1e-3f, 0.01f, 0.1f, 0.5f, 0.9f, 0.95f, 0.99f, 0.999f, 0.99999994f};
    const float T = temperatures[gen.next_u64() % 8], top_p = top_ps[gen.next_u64() % 10];
    const int kind = c % 8;
    const float spread = kind == 0 ? 3.0f : kind == 1 ? 0.5f : kind == 2 ? 1e-4f : kind == 3 ? 30.0f : 1.0f;
    std::vector<float> x(static_cast<size_t>(V));
    for (float& l : x) {
      l = spread * gen.normal();
      if (kind == 4) l = std::round(l * 4) / 4;           // ties
      if (kind == 5) l = std::round(l * 2) / 2 + 100.0f;  // ties, offset
      if (kind == 6 && gen.uniform() < 0.3f) l = -std::numeric_limits<float>::infinity();
    }
    if (kind == 6) x[0] = 1.0f;
    if (kind == 7) {  // a ramp rising with the id: several distinct logits per bucket, in the reverse of their order
      for (int i = 0; i < V; ++i) x[size_t(i)] = 1e-6f * float(i);
    }
    SamplingParams p;
    p.temperature = T;
    p.top_p = top_p;
    p.seed = static_cast<uint64_t>(c) + 1;
    Sampler s(p, 1);
    // The reference: weights from the sampler's exp sweep (as in the test above), a full sort, the shortest prefix.
    const float max = *std::max_element(x.begin(), x.end());
    std::vector<float> w(x.size());
    const double total = cpu::exp_weights(w.data(), x.data(), V, max, 1.0f / T);
    std::vector<std::pair<float, int32_t>> order;
    for (int32_t i = 0; i < V; ++i)
      if (w[size_t(i)] > 0) order.emplace_back(x[size_t(i)], i);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    double cum = 0;
    size_t keep = 0;
    while (keep < order.size() && cum < double(top_p) * total) cum += w[size_t(order[keep++].second)];
    Rng rng(static_cast<uint64_t>(c) + 1);
    for (int draw = 0; draw < 20; ++draw) {
      const double target = double(rng.uniform()) * cum;
      double run = 0;
      size_t i = 0;
      while (i + 1 < keep && !(target < run + w[size_t(order[i].second)])) run += w[size_t(order[i++].second)];
      const int32_t got = s.sample(x);
      if (got != order[i].second) {
        ADD_FAILURE() << "case " << c << " (V " << V << ", T " << T << ", top_p " << top_p << ", kind " << kind
                      << ", nucleus " << keep << ") draw " << draw << ": got " << got << ", a full sort gives "
                      << order[i].second;
        ++failed;
        break;
      }
    }
  }
}

TEST(Sampler, SameSeedRepeatsDifferentSeedsDiffer) {
  auto run = [](std::optional<uint64_t> seed, uint64_t default_seed, int32_t top_k, float top_p) {
    SamplingParams p;
    p.seed = seed;
    p.top_k = top_k;
    p.top_p = top_p;
    Sampler s(p, default_seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 500; ++i) out.push_back(s.sample(kLogits));
    return out;
  };
  for (auto [k, top_p] : {std::pair{0, 1.0f}, std::pair{4, 1.0f}, std::pair{0, 0.9f}, std::pair{6, 0.9f}}) {
    SCOPED_TRACE(k);
    SCOPED_TRACE(top_p);
    EXPECT_EQ(run(123, 1, k, top_p), run(123, 2, k, top_p));           // the request's seed wins
    EXPECT_EQ(run(std::nullopt, 123, k, top_p), run(123, 9, k, top_p));  // the default seed when none is given
    EXPECT_NE(run(123, 1, k, top_p), run(124, 1, k, top_p));
    EXPECT_NE(run(std::nullopt, 1, k, top_p), run(std::nullopt, 2, k, top_p));
  }
}

// ------------------------------------------------------------------------------------------------ validate

void expect_rejected(const SamplingParams& p, const std::string& field) {
  try {
    p.validate(100);
    ADD_FAILURE() << "accepted a bad '" << field << "'";
  } catch (const ds::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[request]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + field + "'"), std::string::npos) << msg;
  }
}

TEST(Sampler, ValidateAcceptsTheAllowedRanges) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate(100));
  p.max_tokens = 1;
  p.temperature = 0.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.stop = {"a", "bb", "\n", "END"};
  p.stop_token_ids = {0, 99};
  EXPECT_NO_THROW(p.validate(100));
  p.temperature = 2.0f;
  p.top_k = 1000;  // more than the vocabulary is no limit, not an error
  p.top_p = 1e-3f;
  EXPECT_NO_THROW(p.validate(100));
}

TEST(Sampler, ValidateRejectsEachBadField) {
  auto with = [](auto&& edit) {
    SamplingParams p;
    edit(p);
    return p;
  };
  expect_rejected(with([](SamplingParams& p) { p.presence_penalty = 2.5f; }), "presence_penalty");
  expect_rejected(with([](SamplingParams& p) { p.frequency_penalty = -2.5f; }), "frequency_penalty");
  expect_rejected(with([](SamplingParams& p) { p.logit_bias = {{5, 101.0f}}; }), "logit_bias");
  expect_rejected(with([](SamplingParams& p) { p.logit_bias = {{1000, 1.0f}}; }), "logit_bias");
  expect_rejected(with([](SamplingParams& p) { p.logprobs = 21; }), "logprobs");
  expect_rejected(with([](SamplingParams& p) { p.prompt_logprobs = true; }), "logprobs");
  expect_rejected(with([](SamplingParams& p) { p.max_tokens = 0; p.logprobs = 0; }), "max_tokens");
  EXPECT_NO_THROW(with([](SamplingParams& p) {
                    p.max_tokens = 0;
                    p.logprobs = 0;
                    p.prompt_logprobs = true;
                  }).validate(100));
  expect_rejected(with([](SamplingParams& p) { p.max_tokens = 0; }), "max_tokens");
  expect_rejected(with([](SamplingParams& p) { p.max_tokens = -5; }), "max_tokens");
  expect_rejected(with([](SamplingParams& p) { p.temperature = -0.1f; }), "temperature");
  expect_rejected(with([](SamplingParams& p) { p.temperature = 2.01f; }), "temperature");
  expect_rejected(with([](SamplingParams& p) { p.temperature = std::nanf(""); }), "temperature");
  expect_rejected(with([](SamplingParams& p) { p.top_k = -1; }), "top_k");
  expect_rejected(with([](SamplingParams& p) { p.top_p = 0.0f; }), "top_p");
  expect_rejected(with([](SamplingParams& p) { p.top_p = -0.5f; }), "top_p");
  expect_rejected(with([](SamplingParams& p) { p.top_p = 1.01f; }), "top_p");
  expect_rejected(with([](SamplingParams& p) { p.top_p = std::nanf(""); }), "top_p");
  expect_rejected(with([](SamplingParams& p) { p.stop = {"a", "b", "c", "d", "e", "f"}; }), "stop");
  expect_rejected(with([](SamplingParams& p) { p.stop = {"a", ""}; }), "stop");
  expect_rejected(with([](SamplingParams& p) { p.stop_token_ids = {3, -1}; }), "stop_token_ids");
  expect_rejected(with([](SamplingParams& p) { p.stop_token_ids = {100}; }), "stop_token_ids");
}

// ------------------------------------------------------------------------------------------------ TextStream

const std::string kSourceDir = DS_SOURCE_DIR;

data::BpeTokenizer& gpt2() {
  static data::BpeTokenizer tok = data::BpeTokenizer::from_directory(kSourceDir + "/data/tokenizer/gpt2");
  return tok;
}

// Well-formed UTF-8 per the Unicode standard's table (no overlongs, surrogates or code points past U+10FFFF).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c <= 0x7F) n = 1;
    else if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else return false;
    if (i + n > s.size()) return false;
    for (size_t j = 1; j < n; ++j) {
      const auto b = static_cast<unsigned char>(s[i + j]);
      if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF)) return false;
    }
    i += n;
  }
  return true;
}

struct Streamed {
  std::vector<TextStream::Delta> deltas;  // one per pushed token
  std::string text;                       // all delta texts
  std::string rest;                       // finish()
};

Streamed stream(const std::vector<int32_t>& ids, std::vector<std::string> stop) {
  TextStream ts(&gpt2(), std::move(stop));
  Streamed out;
  for (int32_t id : ids) {
    out.deltas.push_back(ts.push(id));
    out.text += out.deltas.back().text;
  }
  out.rest = ts.finish();
  return out;
}

// Text mixing ASCII, accents, CJK and emoji: GPT-2's byte-level BPE splits several of these characters.
const std::string kMixed =
    "Hello, world! Caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9. \xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C "
    "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88 "
    "\xF0\x9F\xA4\x97 \xF0\x9F\x8E\x89\xF0\x9F\x9A\x80 \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD ok \xE2\x9C\x93 end";

TEST(Sampler, LogitBiasMovesTheGreedyChoice) {
  const std::vector<float> logits = {0.0f, 3.0f, 2.5f, -1.0f};
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(Sampler(p, 1).sample(logits), 1);
  p.logit_bias = {{1, -100.0f}};
  EXPECT_EQ(Sampler(p, 1).sample(logits), 2);  // the argmax banned: the runner-up
  p.logit_bias = {{3, 4.5f}};
  EXPECT_EQ(Sampler(p, 1).sample(logits), 3);  // -1 + 4.5 beats 3
  p.logit_bias = {{3, 4.0f}};
  EXPECT_EQ(Sampler(p, 1).sample(logits), 1);  // 3 against 3: the lower id
}

// OpenAI's formula on the tokens chosen so far: logit - count * frequency_penalty - (count > 0) * presence_penalty.
TEST(Sampler, PenaltiesFollowOpenAisFormulaOverTheChosenTokens) {
  const std::vector<float> logits = {2.03f, 1.51f, 1.17f, 0.07f};  // no two penalised logits tie below
  auto run = [&](float presence, float frequency, int n) {
    SamplingParams p;
    p.temperature = 0;
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    Sampler s(p, 1);
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
    return out;
  };
  // Reference: greedy over the penalised logits, counts kept here.
  auto reference = [&](float presence, float frequency, int n) {
    std::vector<int> count(logits.size(), 0);
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
      std::vector<double> l(logits.begin(), logits.end());
      for (size_t t = 0; t < l.size(); ++t) l[t] -= count[t] * frequency + (count[t] > 0 ? presence : 0.0);
      const auto best = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ++count[static_cast<size_t>(best)];
      out.push_back(best);
    }
    return out;
  };
  EXPECT_EQ(run(0, 0, 4), (std::vector<int32_t>{0, 0, 0, 0}));
  for (const auto& [presence, frequency] : std::vector<std::pair<float, float>>{{0.61f, 0}, {0, 0.43f}, {0.29f, 0.31f},
                                                                               {1.03f, 1.97f}, {-0.47f, 0.71f}}) {
    SCOPED_TRACE(::testing::Message() << "presence " << presence << ", frequency " << frequency);
    EXPECT_EQ(run(presence, frequency, 8), reference(presence, frequency, 8));
  }
  EXPECT_EQ(run(0.61f, 0, 2), (std::vector<int32_t>{0, 1})) << "2.03 - 0.61 falls below 1.51";
}

TEST(Sampler, TokenLogprobIsTheLogSoftmaxWithTheMostLikelyTokens) {
  Rng rng(5);
  std::vector<float> logits(1000);
  for (auto& l : logits) l = 4.0f * rng.normal();
  logits[17] = logits[18] = 30.0f;  // a tie at the top: the lower id first
  const std::vector<double> p = softmax(logits, 1.0);
  const TokenLogprob lp = token_logprob(logits, 500, 5);
  EXPECT_EQ(lp.token, 500);
  EXPECT_NEAR(lp.logprob, std::log(p[500]), 1e-4);
  const std::vector<int> order = by_probability(p);
  ASSERT_EQ(lp.top.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(lp.top[i].first, order[i]);
    EXPECT_NEAR(lp.top[i].second, std::log(p[static_cast<size_t>(order[i])]), 1e-4);
  }
  EXPECT_EQ(lp.top[0].first, 17);
  EXPECT_TRUE(token_logprob(logits, 3, 0).top.empty());
}

TEST(TextStream, ConcatenationEqualsDecodeWithoutStop) {
  ASSERT_TRUE(valid_utf8(kMixed));
  const std::vector<std::string> texts = {kMixed, "The quick brown fox jumps over the lazy dog.\n\nNew line  two",
                                          ""};
  for (const auto& text : texts) {
    const auto ids = gpt2().encode(text);
    const auto s = stream(ids, {});
    EXPECT_EQ(s.text + s.rest, gpt2().decode(ids));
    EXPECT_EQ(s.text + s.rest, text);
    for (const auto& d : s.deltas) EXPECT_FALSE(d.stopped);
  }
}

TEST(TextStream, SplitCharacterIsNeverEmittedHalf) {
  const auto ids = gpt2().encode(kMixed);
  // The case under test must occur: some token's bytes are not valid UTF-8 on their own.
  int split_tokens = 0;
  for (int32_t id : ids) split_tokens += !valid_utf8(std::string(gpt2().token_bytes(id)));
  ASSERT_GE(split_tokens, 2) << "no token of the test text splits a character; pick another text";

  TextStream ts(&gpt2(), {});
  std::string emitted, decoded;
  for (int32_t id : ids) {
    const auto d = ts.push(id);
    EXPECT_TRUE(valid_utf8(d.text)) << "delta is not valid UTF-8 after token " << id;
    emitted += d.text;
    decoded += gpt2().token_bytes(id);
    // Expected: the decoded prefix cut back to the last character boundary of the (valid) full text.
    size_t boundary = decoded.size();
    while (boundary < kMixed.size() && (static_cast<unsigned char>(kMixed[boundary]) & 0xC0) == 0x80) --boundary;
    EXPECT_EQ(emitted, kMixed.substr(0, boundary));
  }
  const std::string rest = ts.finish();
  EXPECT_TRUE(rest.empty());
  EXPECT_EQ(emitted, kMixed);
}

const std::string kFox = "The quick brown fox jumps over the lazy dog. The end.";

TEST(TextStream, StopAcrossTokensCutsExactlyBeforeIt) {
  const auto ids = gpt2().encode(kFox);
  const std::string stop = "own fox ju";  // starts inside " brown", ends inside " jumps"
  for (int32_t id : ids) ASSERT_EQ(std::string(gpt2().token_bytes(id)).find(stop), std::string::npos);

  TextStream ts(&gpt2(), {"never", stop});
  std::string emitted, decoded;
  bool stopped = false;
  for (int32_t id : ids) {
    const auto d = ts.push(id);
    decoded += gpt2().token_bytes(id);
    if (stopped) {
      EXPECT_TRUE(d.text.empty());
      continue;
    }
    emitted += d.text;
    // Never emits past the cut, and stops exactly on the token that completes the stop string.
    EXPECT_EQ(kFox.substr(0, emitted.size()), emitted);
    EXPECT_LE(emitted.size(), kFox.find(stop));
    EXPECT_EQ(d.stopped, decoded.find(stop) != std::string::npos);
    stopped = d.stopped;
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(emitted, "The quick br");
  EXPECT_EQ(ts.finish(), "");
}

TEST(TextStream, HeldStopPrefixIsReleasedWhenItDiverges) {
  const auto ids = gpt2().encode(kFox);
  TextStream ts(&gpt2(), {"fox jumps high"});
  std::string emitted, decoded;
  for (int32_t id : ids) {
    const auto d = ts.push(id);
    EXPECT_FALSE(d.stopped);
    emitted += d.text;
    decoded += gpt2().token_bytes(id);
    if (decoded == "The quick brown fox jumps") { EXPECT_EQ(emitted, "The quick brown "); }
    if (decoded == "The quick brown fox jumps over") { EXPECT_EQ(emitted, decoded); }
  }
  EXPECT_EQ(emitted + ts.finish(), kFox);
}

TEST(TextStream, EarliestStopWinsAndSingleTokenStops) {
  const auto ids = gpt2().encode(kFox);
  // " fox" completes both; the one that starts first ends the text, whatever the list order.
  auto s = stream(ids, {"fox", "n fox"});
  EXPECT_EQ(s.text, "The quick brow");
  EXPECT_EQ(s.rest, "");
  s = stream(ids, {"quick"});  // exactly one token's text (after its space)
  EXPECT_EQ(s.text, "The ");
  EXPECT_TRUE(s.deltas[1].stopped);
  EXPECT_TRUE(s.deltas.back().stopped);  // pushes after the stop keep saying so, with no text
  EXPECT_TRUE(s.deltas.back().text.empty());
  s = stream(ids, {"absent", "dogs"});
  EXPECT_EQ(s.text + s.rest, kFox);
}

TEST(TextStream, StopStringsFromTheTextCutAtTheirFirstOccurrence) {
  const std::string text = "Once upon a time, in a land far away, there lived a king. The king had a daughter, "
                           "and the daughter had a dog named Rex. Rex ran far, far away.";
  const auto ids = gpt2().encode(text);
  int cases = 0;
  for (size_t start = 0; start + 1 < text.size(); start += 7) {
    for (size_t len : {1, 2, 5, 9, 14}) {
      if (start + len > text.size()) continue;
      const std::string stop = text.substr(start, len);
      const auto s = stream(ids, {stop});
      EXPECT_EQ(s.text, text.substr(0, text.find(stop))) << "stop '" << stop << "'";
      EXPECT_TRUE(s.rest.empty());
      ++cases;
    }
  }
  EXPECT_GT(cases, 80);
}

TEST(TextStream, InvalidBytesAreReleasedAndIncompleteOnesHeld) {
  auto one_token = [](const std::string& bytes) {
    const auto ids = gpt2().encode(bytes);
    EXPECT_EQ(ids.size(), 1u) << "bytes expected to be one token";
    return ids.front();
  };
  TextStream ts(&gpt2(), {});
  EXPECT_EQ(ts.push(one_token("\xFF")).text, "\xFF");  // can never start a character
  EXPECT_EQ(ts.push(one_token("a")).text, "a");
  EXPECT_EQ(ts.push(one_token("\xE4")).text, "");      // first byte of a three-byte character: held
  EXPECT_EQ(ts.push(one_token("b")).text, "\xE4" "b");  // can no longer complete: released as is
  EXPECT_EQ(ts.push(one_token("\xE0")).text, "");
  EXPECT_EQ(ts.push(one_token("\x80")).text, "\xE0\x80");  // E0 80 is an overlong form: never valid
  EXPECT_EQ(ts.push(one_token("\xF0")).text, "");
  EXPECT_EQ(ts.push(one_token("\x9F")).text, "");
  EXPECT_EQ(ts.push(one_token("\x98")).text, "");
  EXPECT_EQ(ts.push(one_token("\x80")).text, "\xF0\x9F\x98\x80");  // U+1F600 completed
  EXPECT_EQ(ts.push(one_token("\xE4")).text, "");
  EXPECT_EQ(ts.push(one_token("\xBD")).text, "");
  EXPECT_EQ(ts.finish(), "\xE4\xBD");  // generation ended: the unfinished character is returned as it is
}

TEST(TextStream, WithoutTokenizerYieldsNoText) {
  TextStream ts(nullptr, {});
  for (int32_t id : {1, 2, 50000}) {
    const auto d = ts.push(id);
    EXPECT_TRUE(d.text.empty());
    EXPECT_FALSE(d.stopped);
  }
  EXPECT_EQ(ts.finish(), "");
  EXPECT_THROW(TextStream(nullptr, {"stop"}), ds::Error);
}

}  // namespace
}  // namespace ds::inference
