// Seeded normal random values for the kernel tests: the same generator (mt19937_64) and distribution everywhere,
// so a test's inputs depend only on its seed.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace ds::testing {

// n values from N(shift, scale^2).
inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(shift, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

}  // namespace ds::testing
