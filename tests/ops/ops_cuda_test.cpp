// The ops with CUDA kernels against their CPU kernels, on a GPU: each op runs on host tensors and on copies of
// them in GPU memory, and the results, copied back, agree: sums and Adam bit for bit (same operations in the same
// order, IEEE division and square root), GELU to float rounding (the CPU's exp is a polynomial, the GPU's expf
// is not), the sum of squares to double rounding (the reduction order within a block differs). Sizes go past one
// pass of the grid (4096 blocks of 256) so the grid-stride loops run more than once. Skipped without a GPU.
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

void expect_identical(const Tensor& gpu, const Tensor& cpu, const char* what) {
  const Tensor back = on_host(gpu);
  int64_t differ = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) differ += back.data<float>()[i] != cpu.data<float>()[i];
  EXPECT_EQ(differ, 0) << what << ": elements that differ from the CPU's";
}

class OpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_F(OpsCuda, ElementwiseMatchesTheCpu) {
  const int64_t n = 3000007;  // not a multiple of a block, and more than one pass of the grid
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
  expect_identical(gs, cs, "add");
  ops::add_inplace(cs, dy);
  ops::add_inplace(gs, gdy);
  expect_identical(gs, cs, "add_inplace");
}

TEST_F(OpsCuda, AdamAndTheNormMatchTheCpu) {
  const int64_t n = 3000007;
  for (const bool adam_w_mode : {true, false}) {
    cpu::AdamParams hp;
    hp.lr = 3e-3f, hp.beta1 = 0.9f, hp.beta2 = 0.95f, hp.eps = 1e-8f, hp.weight_decay = 0.1f, hp.step = 7;
    hp.adam_w_mode = adam_w_mode;
    const Tensor p = host_randn(n, 11), g = host_randn(n, 12), m = host_randn(n, 13), v = host_randn(n, 14);
    for (int64_t i = 0; i < n; ++i) v.data<float>()[i] = std::abs(v.data<float>()[i]);
    const Tensor gp = on_gpu(p), gg = on_gpu(g), gm = on_gpu(m), gv = on_gpu(v);
    for (int step = 0; step < 3; ++step) {
      ops::adamw_step(p, g, m, v, hp, 0.25f);
      ops::adamw_step(gp, gg, gm, gv, hp, 0.25f);
    }
    expect_identical(gp, p, adam_w_mode ? "AdamW param" : "Adam param");
    expect_identical(gm, m, "exp_avg");
    expect_identical(gv, v, "exp_avg_sq");
  }
  const Tensor g = host_randn(n, 15);
  const double want = ops::sum_squares(g), got = ops::sum_squares(on_gpu(g));
  EXPECT_NEAR(got, want, 1e-12 * want);
  EXPECT_EQ(got, ops::sum_squares(on_gpu(g))) << "the GPU's sum of squares must not vary between calls";
}

}  // namespace
