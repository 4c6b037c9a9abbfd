// Causal attention vs a double-precision reference written here: forward values and probabilities, backward by
// central differences of the reference (small shapes) and by an independent analytic reference (tile-sized
// shapes), and causality: outputs at t must not change when inputs after t change. Every case runs on the AVX2
// kernels (DS_CPU_ISA=avx2) and on the machine's best ones (AVX-512 where present).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <random>
#include <vector>

#include "common/isa_scope.h"
#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::IsaScope;

using ds::testing::randn;

struct Shape {
  int B, T, C, NH;
};

const auto kIsas = ::testing::Values(std::string("avx2"), std::string("native"));

// out[B,T,C], att[B,NH,T,T] in double.
template <class Real>
void ref_forward(std::vector<double>& out, std::vector<double>& att, const Real* qkv, const Shape& s) {
  const int HS = s.C / s.NH, C3 = 3 * s.C;
  const double scale = 1.0 / std::sqrt(double(HS));
  out.assign(size_t(s.B) * s.T * s.C, 0.0);
  att.assign(size_t(s.B) * s.NH * s.T * s.T, 0.0);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int t = 0; t < s.T; ++t) {
        const Real* q = qkv + (size_t(b) * s.T + t) * C3 + h * HS;
        double* a = att.data() + ((size_t(b) * s.NH + h) * s.T + t) * s.T;
        double mx = -1e300;
        for (int t2 = 0; t2 <= t; ++t2) {
          const Real* k = qkv + (size_t(b) * s.T + t2) * C3 + s.C + h * HS;
          double dot = 0;
          for (int d = 0; d < HS; ++d) dot += double(q[d]) * double(k[d]);
          a[t2] = dot * scale;
          mx = std::max(mx, a[t2]);
        }
        double sum = 0;
        for (int t2 = 0; t2 <= t; ++t2) sum += (a[t2] = std::exp(a[t2] - mx));
        for (int t2 = 0; t2 <= t; ++t2) a[t2] /= sum;
        double* o = out.data() + (size_t(b) * s.T + t) * s.C + h * HS;
        for (int t2 = 0; t2 <= t; ++t2) {
          const Real* v = qkv + (size_t(b) * s.T + t2) * C3 + 2 * s.C + h * HS;
          for (int d = 0; d < HS; ++d) o[d] += a[t2] * double(v[d]);
        }
      }
}

// Analytic backward in double (llm.c's formulation), independent of the kernel's tiling.
void ref_backward(std::vector<double>& dqkv, const float* dout, const float* qkv, const Shape& s) {
  std::vector<double> out, att;
  ref_forward(out, att, qkv, s);
  const int HS = s.C / s.NH, C3 = 3 * s.C;
  const double scale = 1.0 / std::sqrt(double(HS));
  dqkv.assign(size_t(s.B) * s.T * C3, 0.0);
  std::vector<double> datt(s.T), dpre(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int t = 0; t < s.T; ++t) {
        const double* a = att.data() + ((size_t(b) * s.NH + h) * s.T + t) * s.T;
        const float* g = dout + (size_t(b) * s.T + t) * s.C + h * HS;
        for (int t2 = 0; t2 <= t; ++t2) {
          const float* v = qkv + (size_t(b) * s.T + t2) * C3 + 2 * s.C + h * HS;
          double* dv = dqkv.data() + (size_t(b) * s.T + t2) * C3 + 2 * s.C + h * HS;
          datt[t2] = 0;
          for (int d = 0; d < HS; ++d) {
            datt[t2] += double(g[d]) * double(v[d]);
            dv[d] += a[t2] * double(g[d]);
          }
        }
        double dot = 0;
        for (int t2 = 0; t2 <= t; ++t2) dot += a[t2] * datt[t2];
        for (int t2 = 0; t2 <= t; ++t2) dpre[t2] = a[t2] * (datt[t2] - dot) * scale;
        const float* q = qkv + (size_t(b) * s.T + t) * C3 + h * HS;
        double* dq = dqkv.data() + (size_t(b) * s.T + t) * C3 + h * HS;
        for (int t2 = 0; t2 <= t; ++t2) {
          const float* k = qkv + (size_t(b) * s.T + t2) * C3 + s.C + h * HS;
          double* dk = dqkv.data() + (size_t(b) * s.T + t2) * C3 + s.C + h * HS;
          for (int d = 0; d < HS; ++d) {
            dq[d] += dpre[t2] * double(k[d]);
            dk[d] += dpre[t2] * double(q[d]);
          }
        }
      }
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

class AttentionShapes : public ::testing::TestWithParam<std::tuple<Shape, std::string>> {};

TEST_P(AttentionShapes, ForwardMatchesDoubleReference) {
  const Shape s = std::get<0>(GetParam());
  const IsaScope isa(std::get<1>(GetParam()));
  const auto qkv = randn(size_t(s.B) * s.T * 3 * s.C, 1 + s.T, 1.0f);
  std::vector<float> out(size_t(s.B) * s.T * s.C), att(size_t(s.B) * s.NH * s.T * s.T, -7.0f);
  ds::cpu::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  std::vector<double> rout, ratt;
  ref_forward(rout, ratt, qkv.data(), s);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], rout[i], 2e-5 * (1 + std::abs(rout[i]))) << i;
  for (size_t i = 0; i < att.size(); ++i) ASSERT_NEAR(att[i], ratt[i], 2e-6) << i;
  // Above the diagonal the probabilities are written as exact zeros.
  for (int bh = 0; bh < s.B * s.NH; ++bh)
    for (int t = 0; t < s.T; ++t)
      for (int t2 = t + 1; t2 < s.T; ++t2) ASSERT_EQ(att[(size_t(bh) * s.T + t) * s.T + t2], 0.0f);
}

TEST_P(AttentionShapes, BackwardMatchesAnalyticReference) {
  const Shape s = std::get<0>(GetParam());
  const IsaScope isa(std::get<1>(GetParam()));
  const auto qkv = randn(size_t(s.B) * s.T * 3 * s.C, 10 + s.T, 1.0f);
  const auto dout = randn(size_t(s.B) * s.T * s.C, 20 + s.T, 1.0f);
  std::vector<float> out(size_t(s.B) * s.T * s.C), att(size_t(s.B) * s.NH * s.T * s.T);
  ds::cpu::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  std::vector<float> dqkv(qkv.size(), 123.0f);  // garbage: the kernel must overwrite, not accumulate
  std::vector<float> scratch(ds::cpu::attention_backward_scratch_floats(s.B, s.T, s.C, s.NH), 55.0f);
  ds::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T, s.C,
                              s.NH);
  std::vector<double> ref;
  ref_backward(ref, dout.data(), qkv.data(), s);
  const double tol = 1e-5 * max_abs(ref);
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(dqkv[i], ref[i], tol) << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionShapes,
                         ::testing::Combine(::testing::Values(Shape{2, 5, 8, 2}, Shape{1, 1, 8, 1}, Shape{1, 37, 48, 2},
                                                              Shape{2, 20, 64, 2}, Shape{1, 64, 128, 2},
                                                              Shape{2, 23, 80, 5}, Shape{3, 50, 96, 3},
                                                              Shape{1, 70, 160, 2}),
                                            kIsas));

class AttentionIsa : public ::testing::TestWithParam<std::string> {};

TEST_P(AttentionIsa, BackwardMatchesFiniteDifferencesOfReference) {
  const IsaScope isa(GetParam());
  const Shape s{2, 5, 8, 2};
  const auto qkv = randn(size_t(s.B) * s.T * 3 * s.C, 7, 1.0f);
  const auto dout = randn(size_t(s.B) * s.T * s.C, 8, 1.0f);
  std::vector<float> out(size_t(s.B) * s.T * s.C), att(size_t(s.B) * s.NH * s.T * s.T);
  ds::cpu::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  std::vector<float> dqkv(qkv.size());
  std::vector<float> scratch(ds::cpu::attention_backward_scratch_floats(s.B, s.T, s.C, s.NH));
  ds::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T, s.C,
                              s.NH);
  std::vector<double> x(qkv.begin(), qkv.end());
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> o, a;
    ref_forward(o, a, xs.data(), s);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += double(dout[i]) * o[i];
    return l;
  };
  const double eps = 1e-5;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double lp = loss(x);
    x[i] = x0 - eps;
    const double lm = loss(x);
    x[i] = x0;
    const double fd = (lp - lm) / (2 * eps);
    ASSERT_NEAR(dqkv[i], fd, 1e-4 * (1 + std::abs(fd))) << i;
  }
}

TEST_P(AttentionIsa, IsCausal) {
  const IsaScope isa(GetParam());
  const Shape s{2, 29, 64, 2};
  const auto qkv = randn(size_t(s.B) * s.T * 3 * s.C, 3, 1.0f);
  std::vector<float> out0(size_t(s.B) * s.T * s.C), att(size_t(s.B) * s.NH * s.T * s.T);
  ds::cpu::attention_forward(out0.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  for (int t0 : {0, 5, 17, 27}) {
    auto changed = qkv;
    const auto noise = randn(changed.size(), 100 + t0, 3.0f);
    for (int b = 0; b < s.B; ++b)
      for (int t = t0 + 1; t < s.T; ++t)
        for (int c = 0; c < 3 * s.C; ++c) {
          const size_t i = (size_t(b) * s.T + t) * 3 * s.C + c;
          changed[i] += noise[i];
        }
    std::vector<float> out1(out0.size());
    ds::cpu::attention_forward(out1.data(), att.data(), changed.data(), s.B, s.T, s.C, s.NH);
    for (int b = 0; b < s.B; ++b)
      for (int t = 0; t < s.T; ++t)
        for (int c = 0; c < s.C; ++c) {
          const size_t i = (size_t(b) * s.T + t) * s.C + c;
          if (t <= t0) {
            ASSERT_EQ(out1[i], out0[i]) << "b=" << b << " t=" << t << " depends on inputs after " << t0;
          }
        }
    // And the check can fail: some later output did change.
    bool any = false;
    for (size_t i = (size_t(t0) + 1) * s.C; i < out0.size() && !any; ++i) any = out1[i] != out0[i];
    EXPECT_TRUE(any);
  }
}

TEST_P(AttentionIsa, SameResultForOneAndTwoThreads) {
  const IsaScope isa(GetParam());
  const Shape s{2, 40, 64, 4};
  const auto qkv = randn(size_t(s.B) * s.T * 3 * s.C, 5, 1.0f);
  const auto dout = randn(size_t(s.B) * s.T * s.C, 6, 1.0f);
  std::vector<float> scratch(ds::cpu::attention_backward_scratch_floats(s.B, s.T, s.C, s.NH));
  std::vector<float> out[2], att[2], dqkv[2];
  const int saved = omp_get_max_threads();
  for (int r = 0; r < 2; ++r) {
    omp_set_num_threads(r + 1);
    out[r].resize(size_t(s.B) * s.T * s.C);
    att[r].resize(size_t(s.B) * s.NH * s.T * s.T);
    dqkv[r].resize(qkv.size());
    ds::cpu::attention_forward(out[r].data(), att[r].data(), qkv.data(), s.B, s.T, s.C, s.NH);
    ds::cpu::attention_backward(dqkv[r].data(), dout.data(), qkv.data(), att[r].data(), scratch.data(), s.B, s.T,
                                s.C, s.NH);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(dqkv[0], dqkv[1]);
}

INSTANTIATE_TEST_SUITE_P(Isa, AttentionIsa, kIsas);

}  // namespace
