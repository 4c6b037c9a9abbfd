// Fused classifier vs a double reference (log-softmax cross-entropy of x·wte^T): loss and per-row losses, the
// ignore index -1, N not a multiple of the row chunk, grad_scale, dx/dwte against central differences of the
// reference, dwte +=, the forward-only path (dx null), out-of-range targets, logits_forward, and the sliced form
// (logits_rows_forward, softmax_xent_rows, classifier_rows_backward) against the same double reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include <cmath>
#include <random>
#include <vector>

#include "common/isa_scope.h"
#include "common/random_values.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

std::vector<int32_t> targets(int N, int V, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> t(N);
  for (auto& x : t) x = dist(gen);
  return t;
}

// Per-row losses (0 for ignored rows) of log-softmax cross-entropy, and optionally the analytic gradients
// (softmax - onehot) propagated to x and wte, all in double.
template <class Real>
std::vector<double> ref_losses(const Real* x, const Real* wte, const int32_t* tgt, int N, int C, int V,
                               std::vector<double>* dx = nullptr, std::vector<double>* dwte = nullptr) {
  std::vector<double> losses(N, 0.0), logits(V);
  if (dx) dx->assign(size_t(N) * C, 0.0);
  if (dwte) dwte->assign(size_t(V) * C, 0.0);
  for (int i = 0; i < N; ++i) {
    if (tgt[i] < 0) continue;
    double mx = -1e300;
    for (int v = 0; v < V; ++v) {
      double s = 0;
      for (int c = 0; c < C; ++c) s += double(x[size_t(i) * C + c]) * double(wte[size_t(v) * C + c]);
      logits[v] = s;
      mx = std::max(mx, s);
    }
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(logits[v] - mx);
    losses[i] = std::log(sum) + mx - logits[tgt[i]];
    if (dx) {
      for (int v = 0; v < V; ++v) {
        const double g = std::exp(logits[v] - mx) / sum - (v == tgt[i] ? 1.0 : 0.0);
        for (int c = 0; c < C; ++c) {
          (*dx)[size_t(i) * C + c] += g * double(wte[size_t(v) * C + c]);
          (*dwte)[size_t(v) * C + c] += g * double(x[size_t(i) * C + c]);
        }
      }
    }
  }
  return losses;
}

// The loss, per-row losses and gradients of a classifier run against the double reference; dx and dwte started at
// dx0 and dwte0 (the kernels accumulate into dwte, and the sliced ones into dx too).
void expect_matches_reference(const std::vector<float>& x, const std::vector<float>& wte,
                              const std::vector<int32_t>& tgt, int N, int C, int V, float gs, double loss,
                              const std::vector<float>& losses, const std::vector<float>& dx, float dx0,
                              const std::vector<float>& dwte, float dwte0) {
  std::vector<double> rdx, rdw;
  const auto rl = ref_losses(x.data(), wte.data(), tgt.data(), N, C, V, &rdx, &rdw);
  double rtotal = 0;
  for (double l : rl) rtotal += l;
  EXPECT_NEAR(loss, rtotal, 1e-6 * rtotal);
  for (int i = 0; i < N; ++i) ASSERT_NEAR(losses[i], rl[i], 1e-5 * (1 + rl[i])) << i;
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i] - dx0, gs * rdx[i], 1e-6) << i;
  for (size_t i = 0; i < dwte.size(); ++i) ASSERT_NEAR(dwte[i] - dwte0, gs * rdw[i], 1e-6) << i;
}

TEST(Classifier, BackwardMatchesFiniteDifferencesOfReference) {
  const int N = 10, C = 8, V = 11;
  const float gs = 0.3f;
  const auto x = randn(size_t(N) * C, 1), wte = randn(size_t(V) * C, 2, 0.5f);
  auto tgt = targets(N, V, 3);
  tgt[4] = -1;
  std::vector<float> dx(x.size(), 9.0f), dwte(wte.size(), 1.0f), losses(N, -5.0f);
  std::vector<float> scratch(ds::cpu::classifier_scratch_floats(N, V));
  const double loss = ds::cpu::classifier_forward_backward(dx.data(), dwte.data(), losses.data(), x.data(),
                                                           wte.data(), tgt.data(), gs, scratch.data(), N, C, V);
  std::vector<double> xd(x.begin(), x.end()), wd(wte.begin(), wte.end());
  auto total = [&]() {
    double s = 0;
    for (double l : ref_losses(xd.data(), wd.data(), tgt.data(), N, C, V)) s += l;
    return s;
  };
  const auto rl = ref_losses(xd.data(), wd.data(), tgt.data(), N, C, V);
  EXPECT_NEAR(loss, total(), 1e-5);
  for (int i = 0; i < N; ++i) EXPECT_NEAR(losses[i], rl[i], 1e-5) << i;
  EXPECT_EQ(losses[4], 0.0f);
  auto fd = [&](std::vector<double>& p, size_t i) {
    const double eps = 1e-5, p0 = p[i];
    p[i] = p0 + eps;
    const double lp = total();
    p[i] = p0 - eps;
    const double lm = total();
    p[i] = p0;
    return (lp - lm) / (2 * eps);
  };
  for (size_t i = 0; i < xd.size(); ++i) ASSERT_NEAR(dx[i], gs * fd(xd, i), 1e-5) << "dx " << i;
  for (int c = 0; c < C; ++c) ASSERT_EQ(dx[4 * C + c], 0.0f);  // ignored row
  for (size_t i = 0; i < wd.size(); ++i) ASSERT_NEAR(dwte[i] - 1.0f, gs * fd(wd, i), 1e-5) << "dwte " << i;
}

TEST(Classifier, ManyChunksAndIgnoredRows) {
  const int N = 600, C = 24, V = 203;  // N spans several row chunks with a partial last one; V % 8 != 0
  const float gs = 1.0f / 590;
  const auto x = randn(size_t(N) * C, 4), wte = randn(size_t(V) * C, 5, 0.4f);
  auto tgt = targets(N, V, 6);
  for (int i = 0; i < N; i += 61) tgt[i] = -1;
  std::vector<float> dx(x.size()), dwte(wte.size(), 0.0f), losses(N);
  std::vector<float> scratch(ds::cpu::classifier_scratch_floats(N, V));
  const double loss = ds::cpu::classifier_forward_backward(dx.data(), dwte.data(), losses.data(), x.data(),
                                                           wte.data(), tgt.data(), gs, scratch.data(), N, C, V);
  expect_matches_reference(x, wte, tgt, N, C, V, gs, loss, losses, dx, 0.0f, dwte, 0.0f);

  // Forward only: same losses, dwte untouched.
  std::vector<float> losses2(N);
  auto dw_before = dwte;
  const double loss2 = ds::cpu::classifier_forward_backward(nullptr, dwte.data(), losses2.data(), x.data(),
                                                            wte.data(), tgt.data(), gs, scratch.data(), N, C, V);
  EXPECT_EQ(loss2, loss);
  EXPECT_EQ(losses2, losses);
  EXPECT_EQ(dwte, dw_before);
}

TEST(Classifier, LargeLogitsStayFinite) {
  const int N = 3, C = 4, V = 9;
  auto x = randn(size_t(N) * C, 7, 30.0f), wte = randn(size_t(V) * C, 8, 30.0f);
  const std::vector<int32_t> tgt = {0, 5, 8};
  std::vector<float> dx(x.size()), dwte(wte.size(), 0.0f);
  std::vector<float> scratch(ds::cpu::classifier_scratch_floats(N, V));
  const double loss = ds::cpu::classifier_forward_backward(dx.data(), dwte.data(), nullptr, x.data(), wte.data(),
                                                           tgt.data(), 1.0f, scratch.data(), N, C, V);
  const auto rl = ref_losses(x.data(), wte.data(), tgt.data(), N, C, V);
  EXPECT_NEAR(loss, rl[0] + rl[1] + rl[2], 1e-3 * (1 + loss));
  for (float g : dx) ASSERT_TRUE(std::isfinite(g));
}

TEST(Classifier, RejectsOutOfRangeTargets) {
  const int N = 2, C = 4, V = 5;
  std::vector<float> x(N * C, 0.1f), wte(V * C, 0.1f), scratch(ds::cpu::classifier_scratch_floats(N, V));
  const std::vector<int32_t> bad1 = {0, 5}, bad2 = {-2, 0};
  EXPECT_THROW(ds::cpu::classifier_forward_backward(nullptr, nullptr, nullptr, x.data(), wte.data(), bad1.data(),
                                                    1.0f, scratch.data(), N, C, V),
               ds::Error);
  EXPECT_THROW(ds::cpu::classifier_forward_backward(nullptr, nullptr, nullptr, x.data(), wte.data(), bad2.data(),
                                                    1.0f, scratch.data(), N, C, V),
               ds::Error);
}

// Several row counts and widths with and without a tail of 8 or 16, on the AVX2 kernels (DS_CPU_ISA=avx2) and the
// machine's best.
TEST(Classifier, LogitsForward) {
  const int V = 13;
  for (const char* isa : {"avx2", ""}) {
    const ds::testing::IsaScope scope(isa);
    for (const int N : {1, 3, 5, 16, 17, 40}) {
      for (const int C : {7, 64, 130, 144}) {
        const auto x = randn(size_t(N) * C, 9), wte = randn(size_t(V) * C, 10);
        std::vector<float> logits(size_t(N) * V);
        ds::cpu::logits_forward(logits.data(), x.data(), wte.data(), N, C, V);
        for (int i = 0; i < N; ++i)
          for (int v = 0; v < V; ++v) {
            double s = 0;
            for (int c = 0; c < C; ++c) s += double(x[size_t(i) * C + c]) * wte[size_t(v) * C + c];
            ASSERT_NEAR(logits[size_t(i) * V + v], s, 1e-5 * (1 + std::abs(s))) << "N " << N << " C " << C << isa;
          }
      }
    }
  }
}

// The head a slice of wte rows at a time (slices of 7 rows, the last one short), with ignored rows: the same losses
// and gradients as the double reference; dx and dw accumulate (+=) into what they held.
TEST(Classifier, SlicedRowsMatchReference) {
  const int N = 37, C = 12, V = 47, R = 7;
  const float gs = 0.25f;
  const auto x = randn(size_t(N) * C, 11), wte = randn(size_t(V) * C, 12, 0.4f);
  auto tgt = targets(N, V, 13);
  tgt[3] = tgt[30] = -1;
  std::vector<float> logits(size_t(N) * V, 123.0f), losses(N);
  for (int a = 0; a < V; a += R)
    ds::cpu::logits_rows_forward(logits.data(), x.data(), wte.data() + size_t(a) * C, N, C, V, a, std::min(R, V - a));
  const double loss = ds::cpu::softmax_xent_rows(logits.data(), losses.data(), tgt.data(), true, gs, N, V);
  std::vector<float> dx(x.size(), 2.0f), dwte(wte.size(), -1.0f);
  for (int a = 0; a < V; a += R)
    ds::cpu::classifier_rows_backward(dx.data(), dwte.data() + size_t(a) * C, logits.data(), x.data(),
                                      wte.data() + size_t(a) * C, N, C, V, a, std::min(R, V - a));
  expect_matches_reference(x, wte, tgt, N, C, V, gs, loss, losses, dx, 2.0f, dwte, -1.0f);
  for (int c = 0; c < C; ++c) ASSERT_EQ(dx[3 * C + c], 2.0f);  // ignored row: no gradient

  // Forward only: the logits stay logits, the losses are the same.
  for (int a = 0; a < V; a += R)
    ds::cpu::logits_rows_forward(logits.data(), x.data(), wte.data() + size_t(a) * C, N, C, V, a, std::min(R, V - a));
  EXPECT_EQ(ds::cpu::softmax_xent_rows(logits.data(), nullptr, tgt.data(), false, gs, N, V), loss);
  EXPECT_THROW(ds::cpu::logits_rows_forward(logits.data(), x.data(), wte.data(), N, C, V, V - 3, 7), ds::Error);
}

}  // namespace
