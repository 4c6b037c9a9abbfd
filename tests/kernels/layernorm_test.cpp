// LayerNorm vs a double reference: forward (out, mean, rstd), backward against central differences of the
// reference, += for the parameter grads, and a large shape against the reference's analytic gradient
// (full and partial 32-column blocks, the parallel path).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

template <class Real>
std::vector<double> ref_forward(const Real* x, const Real* w, const Real* b, int N, int C,
                                std::vector<double>* mean = nullptr, std::vector<double>* rstd = nullptr) {
  std::vector<double> out(size_t(N) * C);
  if (mean) mean->resize(N);
  if (rstd) rstd->resize(N);
  for (int i = 0; i < N; ++i) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += double(x[size_t(i) * C + c]);
    m /= C;
    for (int c = 0; c < C; ++c) v += (double(x[size_t(i) * C + c]) - m) * (double(x[size_t(i) * C + c]) - m);
    const double rs = 1.0 / std::sqrt(v / C + 1e-5);
    for (int c = 0; c < C; ++c)
      out[size_t(i) * C + c] = (double(x[size_t(i) * C + c]) - m) * rs * double(w[c]) + double(b[c]);
    if (mean) (*mean)[i] = m;
    if (rstd) (*rstd)[i] = rs;
  }
  return out;
}

class LayerNormShapes : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(LayerNormShapes, ForwardMatchesReference) {
  const auto [N, C] = GetParam();
  const auto x = randn(size_t(N) * C, 1, 2.0f, 0.5f), w = randn(C, 2, 1.0f, 1.0f), b = randn(C, 3);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  ds::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<double> rm, rr;
  const auto ref = ref_forward(x.data(), w.data(), b.data(), N, C, &rm, &rr);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 2e-5 * (1 + std::abs(ref[i]))) << i;
  for (int i = 0; i < N; ++i) {
    ASSERT_NEAR(mean[i], rm[i], 1e-5 * (1 + std::abs(rm[i])));
    ASSERT_NEAR(rstd[i], rr[i], 1e-5 * rr[i]);
  }
}

TEST_P(LayerNormShapes, BackwardMatchesReferenceGradient) {
  const auto [N, C] = GetParam();
  const auto x = randn(size_t(N) * C, 4, 1.5f, -0.3f), w = randn(C, 5, 1.0f, 1.0f), b = randn(C, 6);
  const auto dout = randn(x.size(), 7);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  ds::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<float> dx(x.size(), 3.0f), dw(C, 1.0f), db(C, -1.0f);
  ds::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                              rstd.data(), N, C);
  // Reference gradient of L = sum(dout * y), derived directly in double.
  for (int i = 0; i < N; ++i) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[size_t(i) * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[size_t(i) * C + c] - m) * (x[size_t(i) * C + c] - m);
    const double rs = 1.0 / std::sqrt(v / C + 1e-5);
    double a = 0, bsum = 0;
    for (int c = 0; c < C; ++c) {
      const double g = double(dout[size_t(i) * C + c]) * w[c];
      a += g;
      bsum += g * (x[size_t(i) * C + c] - m) * rs;
    }
    for (int c = 0; c < C; ++c) {
      const double n = (x[size_t(i) * C + c] - m) * rs;
      const double g = double(dout[size_t(i) * C + c]) * w[c];
      const double ref = rs * (g - a / C - n * bsum / C);
      ASSERT_NEAR(dx[size_t(i) * C + c], ref, 1e-4 * (1 + std::abs(ref))) << i << "," << c;
    }
  }
  for (int c = 0; c < C; ++c) {
    double sw = 1.0, sb = -1.0;
    for (int i = 0; i < N; ++i) {
      double m = 0, v = 0;
      for (int k = 0; k < C; ++k) m += x[size_t(i) * C + k];
      m /= C;
      for (int k = 0; k < C; ++k) v += (x[size_t(i) * C + k] - m) * (x[size_t(i) * C + k] - m);
      const double n = (x[size_t(i) * C + c] - m) / std::sqrt(v / C + 1e-5);
      sw += double(dout[size_t(i) * C + c]) * n;
      sb += dout[size_t(i) * C + c];
    }
    ASSERT_NEAR(dw[c], sw, 1e-4 * (1 + std::abs(sw)) * std::sqrt(double(N))) << c;
    ASSERT_NEAR(db[c], sb, 1e-4 * (1 + std::abs(sb)) * std::sqrt(double(N))) << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerNormShapes,
                         ::testing::Values(std::pair{10, 8}, std::pair{3, 37}, std::pair{7, 64},
                                           std::pair{600, 70}, std::pair{64, 768}));

TEST(LayerNorm, BackwardMatchesFiniteDifferencesOfReference) {
  const int N = 4, C = 13;
  const auto x = randn(size_t(N) * C, 8, 1.0f, 0.2f), w = randn(C, 9, 0.5f, 1.0f), b = randn(C, 10);
  const auto dout = randn(x.size(), 11);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  ds::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<float> dx(x.size()), dw(C, 0.0f), db(C, 0.0f);
  ds::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                              rstd.data(), N, C);
  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(b.begin(), b.end());
  auto loss = [&]() {
    const auto o = ref_forward(xd.data(), wd.data(), bd.data(), N, C);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += double(dout[i]) * o[i];
    return l;
  };
  auto fd = [&](std::vector<double>& p, size_t i) {
    const double eps = 1e-5, p0 = p[i];
    p[i] = p0 + eps;
    const double lp = loss();
    p[i] = p0 - eps;
    const double lm = loss();
    p[i] = p0;
    return (lp - lm) / (2 * eps);
  };
  for (size_t i = 0; i < xd.size(); ++i) ASSERT_NEAR(dx[i], fd(xd, i), 1e-4) << "dinp " << i;
  for (int c = 0; c < C; ++c) ASSERT_NEAR(dw[c], fd(wd, c), 1e-4) << "dweight " << c;
  for (int c = 0; c < C; ++c) ASSERT_NEAR(db[c], fd(bd, c), 1e-4) << "dbias " << c;
}

TEST(LayerNorm, BackwardInPlaceOverDout) {
  const int N = 5, C = 40;
  const auto x = randn(size_t(N) * C, 12), w = randn(C, 13), b = randn(C, 14), dout = randn(x.size(), 15);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  ds::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<float> dx(x.size()), dw(C, 0.0f), db(C, 0.0f), dw2(C, 0.0f), db2(C, 0.0f);
  ds::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                              rstd.data(), N, C);
  auto buf = dout;
  ds::cpu::layernorm_backward(buf.data(), dw2.data(), db2.data(), buf.data(), x.data(), w.data(), mean.data(),
                              rstd.data(), N, C);
  EXPECT_EQ(buf, dx);
  EXPECT_EQ(dw, dw2);
  EXPECT_EQ(db, db2);
}

}  // namespace
