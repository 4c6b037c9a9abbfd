// The sampling sweeps against plain scalar loops written here: argmax (first index of the largest, NaNs ignored),
// exp weights against std::exp, the masked mass, the draw against a double-precision running sum (at the middle
// and within a millionth of either end of a token's range), the top-k candidates against a full sort, and the
// candidates above a weight cut against a filter loop, over lengths on and off the vector width, with ties, NaNs and
// infinities.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Values from a few integers (many ties) with NaNs and infinities at random places.
std::vector<float> awkward(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> level(-4, 4), kind(0, 19);
  std::vector<float> v(n);
  for (float& x : v) {
    const int k = kind(gen);
    x = k == 0 ? kNaN : k == 1 ? -kInf : static_cast<float>(level(gen));
  }
  return v;
}

int64_t argmax_reference(const std::vector<float>& x) {
  int64_t best = -1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) continue;
    if (best < 0 || x[i] > x[size_t(best)]) best = int64_t(i);
  }
  return best < 0 ? 0 : best;
}

TEST(Sampling, ArgmaxIsTheFirstLargestIgnoringNaN) {
  for (size_t n : {1, 3, 8, 9, 31, 64, 1000, 50257}) {
    for (uint64_t seed = 0; seed < 6; ++seed) {
      SCOPED_TRACE(n);
      SCOPED_TRACE(seed);
      const auto smooth = randn(n, seed);
      EXPECT_EQ(ds::cpu::argmax(smooth.data(), int64_t(n)), argmax_reference(smooth));
      const auto ties = awkward(n, seed);
      EXPECT_EQ(ds::cpu::argmax(ties.data(), int64_t(n)), argmax_reference(ties));
    }
  }
  std::vector<float> v(20, kNaN);
  EXPECT_EQ(ds::cpu::argmax(v.data(), 20), 0);  // nothing to choose
  v[13] = -kInf;
  EXPECT_EQ(ds::cpu::argmax(v.data(), 20), 13);
  v[17] = kInf;
  v[19] = kInf;
  EXPECT_EQ(ds::cpu::argmax(v.data(), 20), 17);
}

TEST(Sampling, ExpWeightsMatchStdExp) {
  for (size_t n : {1, 7, 8, 100, 1030, 50257}) {
    SCOPED_TRACE(n);
    auto x = randn(n, 5, 6.0f);
    if (n > 5) {
      x[1] = -kInf;
      x[2] = kNaN;
      x[3] = -200.0f;  // far below the maximum: weight 0
    }
    const float max = x[size_t(argmax_reference(x))], inv_t = 1.0f / 0.7f;
    std::vector<float> w(n);
    const double total = ds::cpu::exp_weights(w.data(), x.data(), int64_t(n), max, inv_t);
    double want_total = 0;
    for (size_t i = 0; i < n; ++i) {
      const float z = (x[i] - max) * inv_t;  // the exponent in float, as the sampler always formed it
      const double want = std::isnan(z) || z < -87.0f ? 0.0 : std::exp(double(z));
      want_total += want;
      ASSERT_NEAR(w[i], want, 2e-6 * want + 1e-37) << i;
    }
    EXPECT_NEAR(total, want_total, 1e-6 * want_total);
  }
}

TEST(Sampling, MassAtLeastSumsTheHeavyWeights) {
  for (size_t n : {5, 8, 1031, 50257}) {
    std::vector<float> w = randn(n, 9);
    for (float& v : w) v = std::abs(v);
    for (float t : {0.0f, 0.3f, 1.0f, 2.5f, 100.0f}) {
      double want = 0;
      for (float v : w) want += v >= t ? v : 0.0;
      EXPECT_NEAR(ds::cpu::mass_at_least(w.data(), int64_t(n), t), want, 1e-12 * want + 1e-15) << n << " " << t;
    }
  }
}

TEST(Sampling, DrawLandsOnTheTokenWhoseRangeHoldsTheTarget) {
  for (size_t n : {1, 9, 64, 65, 200, 50257}) {
    SCOPED_TRACE(n);
    std::vector<float> w = randn(n, 12);
    for (size_t i = 0; i < n; ++i) w[i] = i % 7 == 3 ? 0.0f : std::abs(w[i]);  // some zero weights
    if (n == 1) w[0] = 0.5f;
    std::vector<double> end(n);  // running sums
    double cum = 0;
    for (size_t i = 0; i < n; ++i) end[i] = cum += w[i];
    std::mt19937_64 gen(3);
    for (int trial = 0; trial < 200; ++trial) {
      size_t i = std::uniform_int_distribution<size_t>(0, n - 1)(gen);
      while (w[i] == 0.0f) i = (i + 1) % n;
      const double target = end[i] - 0.5 * w[i];  // the middle of token i's range
      ASSERT_EQ(ds::cpu::draw_index(w.data(), int64_t(n), target), int64_t(i)) << "target " << target;
      // Just inside either end of the range: a block sum rounded differently from the running sum would move it.
      ASSERT_EQ(ds::cpu::draw_index(w.data(), int64_t(n), end[i] - 1e-6 * w[i]), int64_t(i));
      if (i > 0) { ASSERT_EQ(ds::cpu::draw_index(w.data(), int64_t(n), end[i - 1] + 1e-6 * w[i]), int64_t(i)); }
    }
    // Past the end (rounding): the last token with weight.
    size_t last = n - 1;
    while (w[last] == 0.0f) --last;
    EXPECT_EQ(ds::cpu::draw_index(w.data(), int64_t(n), cum * 1.01), int64_t(last));
  }
  std::vector<float> zeros(10, 0.0f);
  EXPECT_EQ(ds::cpu::draw_index(zeros.data(), 10, 0.0), -1);
}

TEST(Sampling, TopKCandidatesAreTheKBestByValueThenId) {
  for (size_t n : {1, 10, 300, 4097, 50257}) {
    for (int32_t k : {1, 5, 50, 300, 1000}) {
      for (uint64_t seed : {1, 2}) {
        SCOPED_TRACE(n);
        SCOPED_TRACE(k);
        const auto x = seed == 1 ? randn(n, 20) : awkward(n, 20);
        std::vector<std::pair<float, int32_t>> all;
        for (size_t i = 0; i < n; ++i)
          if (!std::isnan(x[i])) all.emplace_back(x[i], int32_t(i));
        std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
          return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        all.resize(std::min(all.size(), size_t(k)));
        std::vector<std::pair<float, int32_t>> got;
        ds::cpu::top_k_candidates(got, x.data(), int32_t(n), k);
        std::sort(got.begin(), got.end());
        std::sort(all.begin(), all.end());
        ASSERT_EQ(got, all);
      }
    }
  }
}

TEST(Sampling, CandidatesAtLeastAreTheHeavyNonzeroWeightsInIdOrder) {
  for (size_t n : {1, 7, 8, 300, 4097, 50257}) {
    for (uint64_t seed : {1, 2}) {
      SCOPED_TRACE(n);
      SCOPED_TRACE(seed);
      const auto x = seed == 1 ? randn(n, 30) : awkward(n, 30);
      std::vector<float> w(n);
      for (size_t i = 0; i < n; ++i) w[i] = std::isnan(x[i]) ? kNaN : x[i] < 0 ? 0.0f : x[i];  // zeros, NaNs
      for (float tau : {0.0f, 0.5f, 2.0f, 1e30f}) {
        std::vector<std::pair<float, int32_t>> want;
        for (size_t i = 0; i < n; ++i)
          if (w[i] >= tau && w[i] > 0.0f) want.emplace_back(x[i], int32_t(i));
        std::vector<std::pair<float, int32_t>> got = {{1.0f, 99}};  // replaced, not appended to
        ds::cpu::candidates_at_least(got, x.data(), w.data(), int32_t(n), tau);
        ASSERT_EQ(got, want) << "tau " << tau;
      }
    }
  }
}

}  // namespace
