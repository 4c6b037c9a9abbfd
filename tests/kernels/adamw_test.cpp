// Adam/AdamW step vs a scalar double reference of the torch.optim.AdamW update (decoupled decay) and of Adam with
// L2 added to the gradient, over several steps, with bias correction on and off, grad_scale, and lengths that are
// not multiples of 8 (the scalar tail) or are large enough for the parallel path.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/isa_scope.h"
#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

struct RefState {
  std::vector<double> p, m, v;
};

// torch.optim.AdamW (adam_w_mode) / torch.optim.Adam with weight_decay (L2), one step in double.
void ref_step(RefState& s, const std::vector<float>& grad, const ds::cpu::AdamParams& hp, double grad_scale) {
  const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, wd = hp.weight_decay, eps = hp.eps;
  const double bc1 = hp.bias_correction ? 1 - std::pow(b1, double(hp.step)) : 1.0;
  const double bc2 = hp.bias_correction ? 1 - std::pow(b2, double(hp.step)) : 1.0;
  for (size_t i = 0; i < s.p.size(); ++i) {
    double g = double(grad[i]) * grad_scale;
    if (hp.adam_w_mode) {
      s.p[i] *= 1 - lr * wd;
    } else {
      g += wd * s.p[i];
    }
    s.m[i] = b1 * s.m[i] + (1 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    const double denom = std::sqrt(s.v[i]) / std::sqrt(bc2) + eps;
    s.p[i] -= lr / bc1 * s.m[i] / denom;
  }
}

struct Case {
  size_t n;
  bool adam_w_mode;
  bool bias_correction;
  float weight_decay;
  float grad_scale;
};

class AdamCases : public ::testing::TestWithParam<Case> {};

TEST_P(AdamCases, MatchesReferenceOverSteps) {
  const Case c = GetParam();
  auto param = randn(c.n, 1);
  std::vector<float> m(c.n, 0.0f), v(c.n, 0.0f);
  RefState ref{std::vector<double>(param.begin(), param.end()), std::vector<double>(c.n, 0.0),
               std::vector<double>(c.n, 0.0)};
  ds::cpu::AdamParams hp;
  hp.lr = 1e-2f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-8f;
  hp.weight_decay = c.weight_decay;
  hp.adam_w_mode = c.adam_w_mode;
  hp.bias_correction = c.bias_correction;
  for (int step = 1; step <= 5; ++step) {
    hp.step = step;
    const auto grad = randn(c.n, 100 + step, 0.1f * step);
    ds::cpu::adamw_step(param.data(), grad.data(), m.data(), v.data(), c.n, hp, c.grad_scale);
    ref_step(ref, grad, hp, c.grad_scale);
    for (size_t i = 0; i < c.n; ++i) {
      ASSERT_NEAR(param[i], ref.p[i], 2e-6 * (1 + std::abs(ref.p[i]))) << "step " << step << " i " << i;
      // m can cancel (terms ~0.1, sum ~1e-4): the floor is fp32 rounding of the terms.
      ASSERT_NEAR(m[i], ref.m[i], 1e-7 + 1e-6 * std::abs(ref.m[i])) << i;
      ASSERT_NEAR(v[i], ref.v[i], 1e-12 + 1e-5 * std::abs(ref.v[i])) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, AdamCases,
                         ::testing::Values(Case{13, true, true, 0.1f, 1.0f}, Case{13, false, true, 0.1f, 1.0f},
                                           Case{1, true, true, 0.0f, 1.0f}, Case{7, true, false, 0.05f, 0.5f},
                                           Case{1003, false, false, 0.01f, 2.0f},
                                           Case{100005, true, true, 0.1f, 0.25f},
                                           Case{100005, false, true, 0.1f, 1.0f}));

TEST(Adam, BodyAndTailAgree) {
  // The same (param, grad, m, v) at every position must give the same bits, wherever it lands.
  const size_t n = 23;
  std::vector<float> p(n, 0.7f), g(n, -0.3f), m(n, 0.01f), v(n, 0.002f);
  ds::cpu::AdamParams hp;
  hp.weight_decay = 0.1f;
  hp.step = 3;
  ds::cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, hp, 1.0f);
  for (size_t i = 1; i < n; ++i) {
    ASSERT_EQ(p[i], p[0]) << i;
    ASSERT_EQ(m[i], m[0]) << i;
    ASSERT_EQ(v[i], v[0]) << i;
  }
}

}  // namespace

// The fused mixed-precision step against the unfused path it replaces (gradient widened, adamw_step, master
// rounded with the dtype's conversion): the same bits for master, m, v and the 16-bit parameter, for every
// gradient and parameter dtype, on the AVX-512 and AVX2 paths, at lengths with a tail and long enough to run in
// parallel, with an infinite and a NaN gradient among the values.
TEST(Adam, MixedStepIsTheUnfusedStepInOnePass) {
  for (const char* isa : {"native", "avx2"}) {
    ds::testing::IsaScope scope(isa);
    for (const ds::DType gd : {ds::DType::f32, ds::DType::bf16, ds::DType::f16}) {
      for (const ds::DType pd : {ds::DType::bf16, ds::DType::f16}) {
        for (const size_t n : {size_t{37}, size_t{70001}}) {
          const std::string what = fmt::format("{} grad {} param {} n {}", isa, ds::dtype_name(gd),
                                               ds::dtype_name(pd), n);
          std::vector<float> master = randn(n, 3), m(n, 0.0f), v(n, 0.0f);
          std::vector<float> ref_master = master, ref_m = m, ref_v = v, wide(n);
          std::vector<uint16_t> param(n), ref_param(n);
          const size_t gb = ds::dtype_size(gd);
          ds::cpu::AdamParams hp;
          hp.lr = 1e-2f;
          hp.weight_decay = 0.1f;
          for (int step = 1; step <= 3; ++step) {
            hp.step = step;
            std::vector<float> g32 = randn(n, 50 + step, 0.3f);
            g32[5] = step == 2 ? INFINITY : g32[5];
            g32[6] = step == 3 ? NAN : g32[6];
            std::vector<std::byte> grad(n * gb);
            ds::from_f32(grad.data(), g32.data(), gd, n);
            ds::cpu::adamw_step_mixed(master.data(), grad.data(), gd, m.data(), v.data(), param.data(), pd, n, hp,
                                      0.5f);
            ds::to_f32(wide.data(), grad.data(), gd, n);
            ds::cpu::adamw_step(ref_master.data(), wide.data(), ref_m.data(), ref_v.data(), n, hp, 0.5f);
            ds::from_f32(ref_param.data(), ref_master.data(), pd, n);
            ASSERT_EQ(std::memcmp(master.data(), ref_master.data(), n * 4), 0) << what << " step " << step;
            ASSERT_EQ(std::memcmp(m.data(), ref_m.data(), n * 4), 0) << what << " step " << step;
            ASSERT_EQ(std::memcmp(v.data(), ref_v.data(), n * 4), 0) << what << " step " << step;
            ASSERT_EQ(param, ref_param) << what << " step " << step;
          }
        }
      }
    }
  }
}
