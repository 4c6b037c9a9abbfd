// The ops with CUDA kernels against their CPU kernels, on a GPU: each op runs on host tensors and on copies of
// them in GPU memory, and the results, copied back, agree (GELU and Adam to float rounding: the two backends
// evaluate exp and the update in a different order; sums exactly or to double rounding). Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/random_values.h"
#include "ds/core/device.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/ops.h"

using namespace ds;

namespace {

Tensor host_randn(int64_t n, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::f32);
  const std::vector<float> v = ds::testing::randn(static_cast<size_t>(n), seed);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

Tensor on_gpu(const Tensor& h) {
  Tensor d = Tensor::empty(h.shape(), h.dtype(), Category::workspace, Tier::device, Device::cuda(0));
  d.copy_from(h);
  return d;
}

Tensor on_host(const Tensor& d) {
  Tensor h = Tensor::empty(d.shape(), d.dtype());
  h.copy_from(d);
  return h;
}

void expect_close(const Tensor& gpu, const Tensor& cpu, double rel, const char* what) {
  const Tensor back = on_host(gpu);
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    worst = std::max(worst, std::abs(double(back.data<float>()[i]) - cpu.data<float>()[i]));
    scale = std::max(scale, std::abs(double(cpu.data<float>()[i])));
  }
  EXPECT_LE(worst, rel * std::max(scale, 1.0)) << what;
}

class OpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_F(OpsCuda, ElementwiseMatchesTheCpu) {
  const int64_t n = 100003;  // not a multiple of a block
  const Tensor x = host_randn(n, 1), dy = host_randn(n, 2), y = host_randn(n, 3);
  const Tensor gx = on_gpu(x), gdy = on_gpu(dy), gy = on_gpu(y);

  const Tensor cg = Tensor::empty({n}), gg = on_gpu(cg);
  ops::gelu_forward(cg, x);
  ops::gelu_forward(gg, gx);
  expect_close(gg, cg, 1e-6, "gelu_forward");

  const Tensor cd = Tensor::empty({n}), gd = on_gpu(cd);
  ops::gelu_backward(cd, x, dy);
  ops::gelu_backward(gd, gx, gdy);
  expect_close(gd, cd, 1e-5, "gelu_backward");

  const Tensor cs = Tensor::empty({n}), gs = on_gpu(cs);
  ops::add(cs, x, y);
  ops::add(gs, gx, gy);
  expect_close(gs, cs, 0, "add");
  ops::add_inplace(cs, dy);
  ops::add_inplace(gs, gdy);
  expect_close(gs, cs, 0, "add_inplace");
}

TEST_F(OpsCuda, AdamAndTheNormMatchTheCpu) {
  const int64_t n = 65537;
  cpu::AdamParams hp;
  hp.lr = 3e-3f, hp.beta1 = 0.9f, hp.beta2 = 0.95f, hp.eps = 1e-8f, hp.weight_decay = 0.1f, hp.step = 7;
  const Tensor p = host_randn(n, 11), g = host_randn(n, 12), m = host_randn(n, 13), v = host_randn(n, 14);
  for (int64_t i = 0; i < n; ++i) v.data<float>()[i] = std::abs(v.data<float>()[i]);
  const Tensor gp = on_gpu(p), gg = on_gpu(g), gm = on_gpu(m), gv = on_gpu(v);
  for (int step = 0; step < 3; ++step) {
    ops::adamw_step(p, g, m, v, hp, 0.25f);
    ops::adamw_step(gp, gg, gm, gv, hp, 0.25f);
  }
  expect_close(gp, p, 1e-6, "param");
  expect_close(gm, m, 1e-6, "exp_avg");
  expect_close(gv, v, 1e-6, "exp_avg_sq");

  const double want = ops::sum_squares(g), got = ops::sum_squares(gg);
  EXPECT_NEAR(got, want, 1e-9 * want);
}

}  // namespace
