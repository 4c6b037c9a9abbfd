// The benchmark's SLA arithmetic: the generation SLA against a moving average recomputed from its definition (the
// weights summed afresh at every token, as pandas' ewm(span=16, adjust=True)), the lemma the capacity estimate
// rests on (a request that meets it has a mean gap below the limit), and the capacity on hand-computed numbers.
#include "bench/serve_bench.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace ds::serve {
namespace {

// The moving average after each gap, computed directly: sum_k w^(n-k) g_k / sum_k w^(n-k), w = 1 - 2/17.
bool meets_by_definition(const std::vector<double>& gaps, double limit) {
  const double w = 1.0 - 2.0 / 17.0;
  for (size_t n = 0; n < gaps.size(); ++n) {
    double num = 0, den = 0;
    for (size_t k = 0; k <= n; ++k) {
      num += std::pow(w, double(n - k)) * gaps[k];
      den += std::pow(w, double(n - k));
    }
    if (num / den >= limit) return false;
  }
  return true;
}

// Gaps around the limit: mostly a little below it, with stalls of up to 8x now and then.
std::vector<double> random_gaps(std::mt19937_64& rng, double limit) {
  std::uniform_int_distribution<int> length(1, 60);
  std::uniform_real_distribution<double> base(0.3, 1.1), stall(1.0, 8.0), coin(0.0, 1.0);
  std::vector<double> g(static_cast<size_t>(length(rng)));
  for (double& x : g) x = limit * (coin(rng) < 0.05 ? stall(rng) : base(rng));
  return g;
}

TEST(ServeBenchSla, GenerationSlaIsTheMovingAverageOfFastGen) {
  std::mt19937_64 rng(7);
  const double rate = 500, limit = 1.0 / rate;
  int met = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const std::vector<double> gaps = random_gaps(rng, limit);
    const bool ours = generation_meets_sla(gaps, rate);
    ASSERT_EQ(ours, meets_by_definition(gaps, limit)) << "trial " << trial;
    met += ours;
  }
  EXPECT_GT(met, 300);   // both outcomes are exercised
  EXPECT_LT(met, 2700);
  EXPECT_TRUE(generation_meets_sla({}, rate));  // a single token has no gap
  EXPECT_FALSE(generation_meets_sla({limit}, rate));
}

TEST(ServeBenchSla, MeetingTheGenerationSlaBoundsTheMeanGap) {
  std::mt19937_64 rng(11);
  const double rate = 250, limit = 1.0 / rate;
  int met = 0;
  double closest = 0;  // the largest mean gap seen among requests meeting the SLA, over the limit
  for (int trial = 0; trial < 20000; ++trial) {
    const std::vector<double> gaps = random_gaps(rng, limit);
    if (!generation_meets_sla(gaps, rate)) continue;
    ++met;
    double sum = 0;
    for (const double g : gaps) sum += g;
    const double mean = sum / static_cast<double>(gaps.size());
    ASSERT_LT(mean, limit) << "trial " << trial;
    closest = std::max(closest, mean / limit);
  }
  EXPECT_GT(met, 1000);
  EXPECT_GT(closest, 0.9);  // the bound is approached, so a weaker check would not pass by accident
}

TEST(ServeBenchSla, CapacityFromHandComputedCosts) {
  // Prompts of 150 tokens at a floor of 30,000 tokens/s: 5 ms; 20 tokens at 1,000 tokens/s: 19 more gaps of 1 ms.
  // Passes: a prompt 2 ms, a decode among 16 a sixteenth of 1.6 ms: 2 + 19 * 0.1 = 3.9 ms per request.
  const SlaCapacity c = sla_capacity(150, 20, 30000, 1000, 2e-3, 1.6e-3, 16);
  EXPECT_NEAR(c.max_latency_s, 24e-3, 1e-12);
  EXPECT_NEAR(c.pass_time_s, 3.9e-3, 1e-12);
  EXPECT_NEAR(c.clients, 24.0 / 3.9, 1e-9);
  // One generated token has no gap: only the prompt counts on both sides.
  const SlaCapacity one = sla_capacity(150, 1, 30000, 1000, 2e-3, 1.6e-3, 16);
  EXPECT_NEAR(one.clients, 2.5, 1e-9);
}

}  // namespace
}  // namespace ds::serve
