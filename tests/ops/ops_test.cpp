// The ops layer: each op rejects tensors on the wrong device, in the wrong dtype or of the wrong shape with an
// error that names the op and the argument; host access to a device tensor is an error; and the dispatch wires
// its arguments as the plain loops below compute (the kernels themselves are tested in tests/kernels).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/ops.h"

using namespace ds;

namespace {

Tensor host(const Shape& shape, uint64_t seed, DType dtype = DType::f32) {
  Tensor t = Tensor::empty(shape, dtype);
  if (dtype == DType::f32) {
    const std::vector<float> v = ds::testing::randn(static_cast<size_t>(shape.numel()), seed);
    std::copy(v.begin(), v.end(), t.data<float>());
  } else {
    t.zero_();
  }
  return t;
}

// A tensor that claims to live on cuda:0. It borrows host memory, so nothing is allocated on or freed from a GPU:
// the ops must reject it before any kernel could touch it.
struct FakeDevice {
  std::vector<float> memory;
  Tensor t;
  explicit FakeDevice(const Shape& shape)
      : memory(static_cast<size_t>(shape.numel())), t(Tensor::borrow(memory.data(), shape, DType::f32,
                                                                      Device::cuda(0))) {}
};

template <typename Error, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error";
  return "";
}

void expect_contains(const std::string& msg, std::initializer_list<std::string> parts) {
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

}  // namespace

TEST(Ops, MixedDevicesAreAClearError) {
  const Tensor x = host({4, 8}, 1), y = host({4, 16}, 2);
  FakeDevice w({8, 16});
  expect_contains(error_of<DeviceError>([&] { ops::linear_forward(y, x, w.t, Tensor()); }),
                  {"[ops] linear_forward", "'w'", "cuda:0", "same device"});
  FakeDevice dy({4, 8});
  expect_contains(error_of<DeviceError>([&] { ops::add(x, x, dy.t); }), {"[ops] add", "'b'", "cuda:0"});
}

TEST(Ops, AnOpWithoutAKernelOnTheDeviceSaysSo) {
  FakeDevice x({4, 8}), w({8, 16}), y({4, 16});
  expect_contains(error_of<DeviceError>([&] { ops::linear_forward(y.t, x.t, w.t, Tensor()); }),
                  {"linear_forward has no kernel for cuda:0"});
  FakeDevice a({4, 8}), s({2, 4}), g({8}), bias({8});
  expect_contains(error_of<DeviceError>([&] { ops::layernorm_forward(a.t, s.t, a.t, g.t, bias.t); }),
                  {"layernorm_forward", "cuda:0"});
#if !DS_WITH_CUDA  // a build with CUDA has GELU kernels (tests/ops/ops_cuda_test.cpp)
  FakeDevice e({32}), f({32});
  expect_contains(error_of<DeviceError>([&] { ops::gelu_forward(e.t, f.t); }), {"gelu_forward", "cuda:0"});
#endif
}

TEST(Ops, HostAccessToADeviceTensorIsAnError) {
  FakeDevice d({4});
  expect_contains(error_of<DeviceError>([&] { (void)d.t.data<float>(); }), {"host access", "cuda:0"});
  expect_contains(error_of<DeviceError>([&] { (void)d.t.raw(); }), {"host access"});
  EXPECT_EQ(d.t.device_ptr(), static_cast<void*>(d.memory.data()));  // a backend may still pass the address on
}

TEST(Ops, WrongDtypeOrShapeNamesTheArgument) {
  const Tensor x = host({4, 8}, 1), w = host({8, 16}, 2), y = host({4, 16}, 3);
  const Tensor x16 = host({4, 8}, 4, DType::bf16);
  expect_contains(error_of<ShapeError>([&] { ops::linear_forward(y, x16, w, Tensor()); }),
                  {"linear_forward", "'x' must be f32", "bf16"});
  const Tensor w_wrong = host({9, 16}, 5);
  expect_contains(error_of<ShapeError>([&] { ops::linear_forward(y, x, w_wrong, Tensor()); }),
                  {"'w' must have shape [8, 16]", "[9, 16]"});
  const Tensor b_wrong = host({8}, 6);
  expect_contains(error_of<ShapeError>([&] { ops::linear_forward(y, x, w, b_wrong); }), {"'b' must have shape [16]"});
  const Tensor stats = host({2, 3}, 7), lw = host({8}, 8), lb = host({8}, 9), out = host({4, 8}, 10);
  expect_contains(error_of<ShapeError>([&] { ops::layernorm_forward(out, stats, x, lw, lb); }),
                  {"layernorm_forward", "'stats' must have shape [2, 4]"});
  const Tensor qkv = host({2 * 3, 24}, 11), att = host({2, 2, 3, 3}, 12), ay = host({6, 8}, 13);
  expect_contains(error_of<ShapeError>([&] { ops::attention_forward(ay, att, qkv, 2, 3, 3); }),
                  {"attention_forward", "8 channels do not split into 3 heads"});
  const Tensor ids = host({5}, 0, DType::i32), wte = host({10, 8}, 14), wpe = host({4, 8}, 15), ex = host({6, 8}, 16);
  expect_contains(error_of<ShapeError>([&] { ops::embedding_forward(ex, ids, wte, wpe, 2, 3); }),
                  {"embedding_forward", "'ids' must hold 6 elements"});
  EXPECT_THROW(ops::linear_forward(y, Tensor(), w, Tensor()), ShapeError);  // undefined where one is needed
}

// The dispatch passes dimensions and arguments in the right order: the results equal plain loops.
TEST(Ops, ResultsMatchPlainLoops) {
  const int N = 5, IC = 7, OC = 3;
  const Tensor x = host({N, IC}, 21), w = host({IC, OC}, 22), b = host({OC}, 23), y = host({N, OC}, 24);
  ops::linear_forward(y, x, w, b);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double acc = b.data<float>()[o];
      for (int i = 0; i < IC; ++i) acc += double(x.data<float>()[n * IC + i]) * w.data<float>()[i * OC + o];
      EXPECT_NEAR(y.data<float>()[n * OC + o], acc, 1e-5) << n << "," << o;
    }

  const int C = 6;
  const Tensor lx = host({N, C}, 25), lw = host({C}, 26), lb = host({C}, 27), ly = host({N, C}, 28);
  const Tensor stats = host({2, N}, 29);
  ops::layernorm_forward(ly, stats, lx, lw, lb);
  for (int n = 0; n < N; ++n) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; ++c) mean += lx.data<float>()[n * C + c];
    mean /= C;
    for (int c = 0; c < C; ++c) var += std::pow(lx.data<float>()[n * C + c] - mean, 2);
    const double rstd = 1.0 / std::sqrt(var / C + 1e-5);
    for (int c = 0; c < C; ++c)
      EXPECT_NEAR(ly.data<float>()[n * C + c],
                  (lx.data<float>()[n * C + c] - mean) * rstd * lw.data<float>()[c] + lb.data<float>()[c], 1e-5);
  }

  const int B = 2, T = 3, V = 10;
  Tensor ids = Tensor::empty({B * T}, DType::i32);
  for (int i = 0; i < B * T; ++i) ids.data<int32_t>()[i] = (i * 7) % V;
  const Tensor wte = host({V, C}, 30), wpe = host({T + 1, C}, 31), ex = host({B * T, C}, 32);
  ops::embedding_forward(ex, ids, wte, wpe, B, T);
  for (int i = 0; i < B * T; ++i)
    for (int c = 0; c < C; ++c)
      EXPECT_FLOAT_EQ(ex.data<float>()[i * C + c],
                      wte.data<float>()[ids.data<int32_t>()[i] * C + c] + wpe.data<float>()[(i % T) * C + c]);
}

// Adam over one chunk: the op's result equals the update written out by hand (DeepSpeed's CPU-Adam with decoupled
// decay); a bf16 gradient is widened exactly first; the moments must be fp32 and the tensors on one device.
TEST(Ops, AdamwStepIsTheHandWrittenUpdate) {
  const int n = 37;
  cpu::AdamParams hp;
  hp.lr = 0.01f, hp.beta1 = 0.9f, hp.beta2 = 0.95f, hp.eps = 1e-6f, hp.weight_decay = 0.1f, hp.step = 3;
  const float scale = 0.5f;
  const Tensor p = host({n}, 41), g = host({n}, 42), m = host({n}, 43), v = host({n}, 44);
  for (int i = 0; i < n; ++i) v.data<float>()[i] = std::abs(v.data<float>()[i]);
  std::vector<double> want(n);
  for (int i = 0; i < n; ++i) {
    const double gi = double(g.data<float>()[i]) * scale;
    const double mi = 0.9 * m.data<float>()[i] + 0.1 * gi, vi = 0.95 * v.data<float>()[i] + 0.05 * gi * gi;
    const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.95, 3);
    double pi = p.data<float>()[i] * (1 - 0.01 * 0.1);
    pi -= 0.01 / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + 1e-6);
    want[i] = pi;
  }
  Tensor g16 = Tensor::empty({n}, DType::bf16);
  g16.copy_from(g);
  Tensor g_back = Tensor::empty({n}, DType::f32);
  g_back.copy_from(g16);  // what the bf16 gradient holds
  const Tensor p2 = host({n}, 41), m2 = host({n}, 43), v2 = host({n}, 44);
  for (int i = 0; i < n; ++i) v2.data<float>()[i] = std::abs(v2.data<float>()[i]);
  const Tensor p3 = host({n}, 41), m3 = host({n}, 43), v3 = host({n}, 44);
  for (int i = 0; i < n; ++i) v3.data<float>()[i] = std::abs(v3.data<float>()[i]);

  ops::adamw_step(p, g, m, v, hp, scale);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(p.data<float>()[i], want[i], 1e-6) << i;
  ops::adamw_step(p2, g16, m2, v2, hp, scale, Tensor::empty({64}, DType::f32));
  ops::adamw_step(p3, g_back, m3, v3, hp, scale);
  for (int i = 0; i < n; ++i) EXPECT_EQ(p2.data<float>()[i], p3.data<float>()[i]) << i;

  // Adam (adam_w_mode false): the decay enters the gradient as L2 instead of shrinking the parameter.
  cpu::AdamParams l2 = hp;
  l2.adam_w_mode = false;
  const Tensor q = host({n}, 41), qm = host({n}, 43), qv = host({n}, 44);
  for (int i = 0; i < n; ++i) qv.data<float>()[i] = std::abs(qv.data<float>()[i]);
  std::vector<double> want_l2(n);
  for (int i = 0; i < n; ++i) {
    const double gi = double(g.data<float>()[i]) * scale + 0.1 * q.data<float>()[i];
    const double mi = 0.9 * qm.data<float>()[i] + 0.1 * gi, vi = 0.95 * qv.data<float>()[i] + 0.05 * gi * gi;
    const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.95, 3);
    want_l2[i] = q.data<float>()[i] - 0.01 / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + 1e-6);
  }
  ops::adamw_step(q, g, qm, qv, l2, scale);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(q.data<float>()[i], want_l2[i], 1e-6) << i;

  expect_contains(error_of<ShapeError>([&] { ops::adamw_step(p, g, Tensor::empty({n}, DType::bf16), v, hp, 1); }),
                  {"[ops] adamw_step", "'m'"});
  expect_contains(error_of<ShapeError>([&] { ops::adamw_step(p, g16, m, v, hp, 1); }), {"adamw_step", "'wide'"});
  FakeDevice d({n});
  expect_contains(error_of<DeviceError>([&] { ops::adamw_step(p, g, m, d.t, hp, 1); }), {"adamw_step", "'v'",
                                                                                          "cuda:0"});
}

TEST(Ops, SumSquaresOfEachFloatDtype) {
  const int n = 10000;  // more than one widening piece
  const Tensor x = host({n}, 51);
  Tensor h = Tensor::empty({n}, DType::f16);
  h.copy_from(x);
  Tensor back = Tensor::empty({n}, DType::f32);
  back.copy_from(h);
  double want = 0, want16 = 0;
  for (int i = 0; i < n; ++i) {
    want += double(x.data<float>()[i]) * x.data<float>()[i];
    want16 += double(back.data<float>()[i]) * back.data<float>()[i];
  }
  EXPECT_NEAR(ops::sum_squares(x), want, 1e-9 * want);
  EXPECT_NEAR(ops::sum_squares(h), want16, 1e-9 * want16);
  expect_contains(error_of<ShapeError>([&] { ops::sum_squares(Tensor::empty({3}, DType::i32)); }), {"sum_squares"});
#if !DS_WITH_CUDA
  FakeDevice d({4});
  expect_contains(error_of<DeviceError>([&] { ops::sum_squares(d.t); }), {"sum_squares", "cuda:0"});
#endif
}
