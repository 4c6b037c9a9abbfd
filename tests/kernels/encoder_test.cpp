// Embedding forward vs a plain reference; backward against central differences of the reference with repeated
// tokens, the += convention, bit-identical results for one and two threads, a negative token id rejected, and the
// forward from rows already looked up (ZeRO-3) bit-identical to the forward from wte.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <random>
#include <vector>

#include "common/random_values.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

std::vector<int32_t> tokens(size_t n, int V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

template <class Real>
std::vector<double> ref_forward(const int32_t* inp, const Real* wte, const Real* wpe, int B, int T, int C) {
  std::vector<double> out(size_t(B) * T * C);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c)
        out[(size_t(b) * T + t) * C + c] = double(wte[size_t(inp[b * T + t]) * C + c]) + double(wpe[size_t(t) * C + c]);
  return out;
}

TEST(Encoder, ForwardMatchesReference) {
  const int B = 3, T = 7, C = 19, V = 11;
  const auto inp = tokens(B * T, V, 1);
  const auto wte = randn(size_t(V) * C, 2), wpe = randn(size_t(T) * C, 3);
  std::vector<float> out(size_t(B) * T * C);
  ds::cpu::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
  const auto ref = ref_forward(inp.data(), wte.data(), wpe.data(), B, T, C);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_FLOAT_EQ(out[i], float(ref[i]));
}

TEST(Encoder, ForwardFromLookedUpRowsIsBitIdentical) {
  const int B = 2, T = 9, C = 13, V = 6;
  const auto inp = tokens(B * T, V, 4);
  const auto wte = randn(size_t(V) * C, 5), wpe = randn(size_t(T) * C, 6);
  std::vector<float> rows(size_t(B) * T * C), a(rows.size()), b(rows.size());
  for (int i = 0; i < B * T; ++i)
    std::copy_n(wte.begin() + size_t(inp[i]) * C, C, rows.begin() + size_t(i) * C);
  ds::cpu::encoder_forward(a.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
  ds::cpu::encoder_forward_rows(b.data(), rows.data(), wpe.data(), B, T, C);
  EXPECT_EQ(a, b);
}

TEST(Encoder, BackwardMatchesFiniteDifferencesOfReference) {
  const int B = 2, T = 5, C = 8, V = 11;
  auto inp = tokens(B * T, V, 4);
  inp[3] = inp[7] = inp[8] = 2;  // repeated tokens
  const auto wte = randn(size_t(V) * C, 5), wpe = randn(size_t(T) * C, 6), dout = randn(size_t(B) * T * C, 7);
  std::vector<float> dwte(wte.size(), 1.0f), dwpe(wpe.size(), -2.0f);
  ds::cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T, C);
  std::vector<double> e(wte.begin(), wte.end()), p(wpe.begin(), wpe.end());
  auto loss = [&]() {
    const auto o = ref_forward(inp.data(), e.data(), p.data(), B, T, C);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += double(dout[i]) * o[i];
    return l;
  };
  auto fd = [&](std::vector<double>& w, size_t i) {
    const double eps = 1e-4, w0 = w[i];
    w[i] = w0 + eps;
    const double lp = loss();
    w[i] = w0 - eps;
    const double lm = loss();
    w[i] = w0;
    return (lp - lm) / (2 * eps);
  };
  for (size_t i = 0; i < e.size(); ++i) ASSERT_NEAR(dwte[i] - 1.0f, fd(e, i), 1e-5) << "dwte " << i;
  for (size_t i = 0; i < p.size(); ++i) ASSERT_NEAR(dwpe[i] + 2.0f, fd(p, i), 1e-5) << "dwpe " << i;
}

TEST(Encoder, BackwardIsDeterministicAcrossThreadCounts) {
  const int B = 8, T = 64, C = 96, V = 50;  // many repeats, large enough for the parallel path
  const auto inp = tokens(B * T, V, 8);
  const auto dout = randn(size_t(B) * T * C, 9);
  std::vector<float> dwte[2], dwpe[2];
  const int saved = omp_get_max_threads();
  for (int r = 0; r < 2; ++r) {
    omp_set_num_threads(r + 1);
    dwte[r].assign(size_t(V) * C, 0.0f);
    dwpe[r].assign(size_t(T) * C, 0.0f);
    ds::cpu::encoder_backward(dwte[r].data(), dwpe[r].data(), dout.data(), inp.data(), B, T, C);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(dwte[0], dwte[1]);
  EXPECT_EQ(dwpe[0], dwpe[1]);
  // Sum over tokens equals the sum over rows (every row lands somewhere exactly once).
  for (int c = 0; c < C; ++c) {
    double a = 0, b = 0;
    for (int v = 0; v < V; ++v) a += dwte[0][size_t(v) * C + c];
    for (int i = 0; i < B * T; ++i) b += dout[size_t(i) * C + c];
    ASSERT_NEAR(a, b, 1e-3);
  }
}

TEST(Encoder, NegativeTokenIsRejected) {
  const int B = 1, T = 2, C = 4;
  const std::vector<int32_t> inp = {0, -1};
  std::vector<float> wte(8), wpe(8), out(8);
  EXPECT_THROW(ds::cpu::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C), ds::Error);
  EXPECT_THROW(ds::cpu::encoder_backward(wte.data(), wpe.data(), out.data(), inp.data(), B, T, C), ds::Error);
}

}  // namespace
