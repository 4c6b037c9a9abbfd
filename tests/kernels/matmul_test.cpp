// Linear layer (HF Conv1D layout) vs a double reference: forward with and without bias, backward against central
// differences of the reference, the += convention for dweight/dbias, null dinp/dbias, and a shape that exercises
// the parallel dbias column sum with a partial column block.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

template <class Real>
std::vector<double> ref_forward(const Real* inp, const Real* w, const Real* bias, int N, int IC, int OC) {
  std::vector<double> out(size_t(N) * OC);
  for (int i = 0; i < N; ++i)
    for (int o = 0; o < OC; ++o) {
      double s = bias ? double(bias[o]) : 0.0;
      for (int k = 0; k < IC; ++k) s += double(inp[size_t(i) * IC + k]) * double(w[size_t(k) * OC + o]);
      out[size_t(i) * OC + o] = s;
    }
  return out;
}

void check_forward(int N, int IC, int OC, bool with_bias) {
  const auto inp = randn(size_t(N) * IC, 1), w = randn(size_t(IC) * OC, 2, 0.2f), b = randn(OC, 3);
  std::vector<float> out(size_t(N) * OC, 9.0f);
  ds::cpu::matmul_forward(out.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr, N, IC, OC);
  const auto ref = ref_forward(inp.data(), w.data(), with_bias ? b.data() : nullptr, N, IC, OC);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-4 * (1 + std::abs(ref[i]))) << i;
}

TEST(Matmul, ForwardWithBias) { check_forward(10, 8, 11, true); }
TEST(Matmul, ForwardWithoutBias) { check_forward(10, 8, 11, false); }
TEST(Matmul, ForwardLargerWithBias) { check_forward(300, 96, 200, true); }

TEST(Matmul, BackwardMatchesFiniteDifferencesOfReference) {
  const int N = 10, IC = 8, OC = 11;
  const auto inp = randn(size_t(N) * IC, 4), w = randn(size_t(IC) * OC, 5, 0.5f), b = randn(OC, 6);
  const auto dout = randn(size_t(N) * OC, 7);
  std::vector<float> dinp(inp.size(), 42.0f), dw(w.size(), 0.5f), db(OC, -0.25f);
  ds::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, IC, OC);

  std::vector<double> x(inp.begin(), inp.end()), wd(w.begin(), w.end()), bd(b.begin(), b.end());
  auto loss = [&]() {
    const auto o = ref_forward(x.data(), wd.data(), bd.data(), N, IC, OC);
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
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(dinp[i], fd(x, i), 1e-4) << "dinp " << i;
  for (size_t i = 0; i < wd.size(); ++i) ASSERT_NEAR(dw[i] - 0.5f, fd(wd, i), 1e-4) << "dweight " << i;
  for (size_t i = 0; i < bd.size(); ++i) ASSERT_NEAR(db[i] + 0.25f, fd(bd, i), 1e-4) << "dbias " << i;
}

TEST(Matmul, BackwardNullDinpAndDbias) {
  const int N = 33, IC = 20, OC = 100;  // OC = 3 full 32-column blocks + a partial one
  const auto inp = randn(size_t(N) * IC, 8), w = randn(size_t(IC) * OC, 9), dout = randn(size_t(N) * OC, 10);
  std::vector<float> dw(w.size(), 0.0f), dw2(w.size(), 0.0f), db(OC, 0.0f), dinp(inp.size());
  ds::cpu::matmul_backward(nullptr, dw.data(), nullptr, dout.data(), inp.data(), w.data(), N, IC, OC);
  ds::cpu::matmul_backward(dinp.data(), dw2.data(), db.data(), dout.data(), inp.data(), w.data(), N, IC, OC);
  EXPECT_EQ(dw, dw2);
  for (int k = 0; k < IC; ++k)
    for (int o = 0; o < OC; ++o) {
      double s = 0;
      for (int i = 0; i < N; ++i) s += double(inp[size_t(i) * IC + k]) * dout[size_t(i) * OC + o];
      ASSERT_NEAR(dw[size_t(k) * OC + o], s, 1e-4 * (1 + std::abs(s)));
    }
}

TEST(Matmul, DbiasLargeIsColumnSumAndAccumulates) {
  const int N = 700, IC = 4, OC = 77;  // N*OC > the parallel threshold
  const auto inp = randn(size_t(N) * IC, 11), w = randn(size_t(IC) * OC, 12), dout = randn(size_t(N) * OC, 13);
  std::vector<float> dw(w.size(), 0.0f), db(OC, 1.0f);
  ds::cpu::matmul_backward(nullptr, dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, IC, OC);
  for (int o = 0; o < OC; ++o) {
    double s = 1.0;
    for (int i = 0; i < N; ++i) s += dout[size_t(i) * OC + o];
    ASSERT_NEAR(db[o], s, 1e-3) << o;
  }
}

}  // namespace
