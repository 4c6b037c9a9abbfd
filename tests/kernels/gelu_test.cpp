// GELU (tanh approximation) vs a double reference over [-12, 12] with lengths that are not multiples of 8 or 16,
// backward against central differences of the reference, in-place use, and the parallel path; each on the AVX2
// kernels (DS_CPU_ISA=avx2) and on the machine's best ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <random>
#include <vector>

#include "common/isa_scope.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::IsaScope;

class Gelu : public ::testing::TestWithParam<std::string> {};

double ref_gelu(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

std::vector<float> inputs(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-12.0f, 12.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  if (n > 4) {
    v[0] = 0.0f;
    v[1] = -0.0f;
    v[2] = 1e-6f;
    v[3] = -30.0f;
    v[4] = 30.0f;
  }
  return v;
}

TEST_P(Gelu, ForwardMatchesReference) {
  const IsaScope isa(GetParam());
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{13}, size_t{16}, size_t{31}, size_t{1000}, size_t{100003}}) {
    const auto x = inputs(n, n);
    std::vector<float> y(n, 5.0f);
    ds::cpu::gelu_forward(y.data(), x.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const double r = ref_gelu(x[i]);
      ASSERT_NEAR(y[i], r, 1e-6 + 2e-6 * std::abs(r)) << "n=" << n << " x=" << x[i];
    }
  }
}

TEST_P(Gelu, BackwardMatchesFiniteDifferencesOfReference) {
  const IsaScope isa(GetParam());
  for (size_t n : {size_t{5}, size_t{16}, size_t{1001}, size_t{70001}}) {
    const auto x = inputs(n, 100 + n);
    std::mt19937_64 gen(n);
    std::normal_distribution<float> dist;
    std::vector<float> g(n);
    for (auto& v : g) v = dist(gen);
    std::vector<float> dx(n, 7.0f);
    ds::cpu::gelu_backward(dx.data(), x.data(), g.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const double eps = 1e-6;
      const double fd = (ref_gelu(double(x[i]) + eps) - ref_gelu(double(x[i]) - eps)) / (2 * eps) * g[i];
      ASSERT_NEAR(dx[i], fd, 1e-5 * (1 + std::abs(fd))) << "x=" << x[i];
    }
  }
}

TEST_P(Gelu, EveryAlignmentAndLength) {
  const IsaScope isa(GetParam());
  const auto x = inputs(200, 11);
  std::vector<float> y(200), g(200, 0.75f), dx(200);
  for (size_t off = 0; off < 17; ++off) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{40}, size_t{150}}) {
      std::fill(y.begin(), y.end(), -1.0f);
      std::fill(dx.begin(), dx.end(), -1.0f);
      ds::cpu::gelu_forward(y.data() + off, x.data() + off, n);
      ds::cpu::gelu_backward(dx.data() + off, x.data() + off, g.data() + off, n);
      for (size_t i = 0; i < y.size(); ++i) {
        if (i < off || i >= off + n) {
          ASSERT_EQ(y[i], -1.0f) << "wrote outside the range, off=" << off << " n=" << n << " i=" << i;
          ASSERT_EQ(dx[i], -1.0f);
        } else {
          ASSERT_NEAR(y[i], ref_gelu(x[i]), 1e-6 + 2e-6 * std::abs(ref_gelu(x[i])));
          const double fd = (ref_gelu(double(x[i]) + 1e-6) - ref_gelu(double(x[i]) - 1e-6)) / 2e-6 * 0.75;
          ASSERT_NEAR(dx[i], fd, 1e-5 * (1 + std::abs(fd)));
        }
      }
    }
  }
}

TEST_P(Gelu, InPlace) {
  const IsaScope isa(GetParam());
  const size_t n = 77;
  const auto x = inputs(n, 3);
  std::vector<float> y(n), y2 = x, dx(n), g(n, 0.5f);
  ds::cpu::gelu_forward(y.data(), x.data(), n);
  ds::cpu::gelu_forward(y2.data(), y2.data(), n);
  EXPECT_EQ(y, y2);
  ds::cpu::gelu_backward(dx.data(), x.data(), g.data(), n);
  ds::cpu::gelu_backward(g.data(), x.data(), g.data(), n);
  EXPECT_EQ(dx, g);
}

INSTANTIATE_TEST_SUITE_P(Isa, Gelu, ::testing::Values(std::string("avx2"), std::string("native")));

}  // namespace
