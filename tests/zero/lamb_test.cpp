// LAMB through the ZeRO optimizer at stage 0 against a plain transcription of DeepSpeed's FusedLamb kernel
// (csrc/lamb/fused_lamb_cuda_kernel.cu), one trust ratio per parameter tensor: parameters that share a gather unit,
// a parameter sliced over three units, an all-zero parameter (ratio 1) and state tiles that cut across parameters,
// in fp32 and with bf16 parameters (fp32 master). Under ZeRO (stage >= 1) it is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ds/comm/comm_factory.h"
#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/nn/parameter.h"
#include "ds/zero/zero_optimizer.h"

namespace ds {
namespace {

struct LambModel {
  nn::ParameterStore store;
  std::unique_ptr<comm::Communicator> comm = comm::make_self_communicator();
  std::unique_ptr<zero::ZeroOptimizer> opt;
  cpu::LambParams hyper;

  LambModel(const zero::ZeroPrecision& precision, int stage = 0) {
    store.begin_unit("a");
    store.add("a.w", {40});
    store.add("a.b", {8});
    store.begin_unit("e");
    store.add_sliced("e.w", {12, 8}, 4);  // three units of 32 elements
    store.begin_unit("z");
    store.add("z.w", {16});  // stays zero: its trust ratio is 1
    store.materialize(zero::ZeroOptimizer::alignment(1), true, true, precision.params, precision.grads);
    config::ZeroConfig zero;
    zero.stage = stage;
    zero.sub_group_size = 48;  // tiles that cut across parameters
    hyper.lr = 0.02f;
    hyper.weight_decay = 0.05f;
    hyper.beta1 = 0.8f;
    cpu::AdamParams adam;
    opt = std::make_unique<zero::ZeroOptimizer>(store, *comm, zero, adam, precision);
  }
  static float param(const nn::Parameter& p, int64_t k) {
    return p.name == "z.w" ? 0.0f : 0.25f * float((p.offset + k) % 5) - 0.5f;
  }
  // Multiples of 1/8: exact in bf16, so both precisions see the same gradients.
  static float grad(const nn::Parameter& p, int64_t k, int step) {
    return p.name == "z.w" ? 0.0f : 0.125f * float((p.offset + 3 * k + step) % 7) - 0.375f;
  }
  void set_parameters() {
    for (const nn::Parameter& p : store.all()) {
      std::vector<float> v(static_cast<size_t>(p.numel()));
      for (int64_t k = 0; k < p.numel(); ++k) v[static_cast<size_t>(k)] = param(p, k);
      opt->set_parameters(p.offset, v.data(), p.numel());
    }
  }
  void train_step(int step) {
    opt->begin_batch();
    opt->begin_micro_batch(true);
    const Tensor& flat = store.flat_grads();
    for (const nn::Parameter& p : store.all())
      for (int64_t k = 0; k < p.numel(); ++k) {
        const float g = grad(p, k, step);
        cpu::from_f32(static_cast<std::byte*>(flat.raw()) + (p.offset + k) * int64_t(dtype_size(flat.dtype())), &g,
                      flat.dtype(), 1);
      }
    opt->end_micro_batch(true);
    opt->step(hyper.lr, 1.0f);
  }
};

// FusedLamb's arithmetic per parameter tensor, in double.
struct Reference {
  std::vector<double> p, m, v;
  void step(const std::vector<double>& g, const cpu::LambParams& h, int t) {
    double w2 = 0, u2 = 0;
    std::vector<double> u(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = h.beta1 * m[i] + (1 - h.beta1) * g[i];
      v[i] = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
      u[i] = m[i] / (std::sqrt(v[i]) + h.eps) + h.weight_decay * p[i];
      w2 += p[i] * p[i];
      u2 += u[i] * u[i];
    }
    double coeff = 1;
    if (w2 > 0 && u2 > 0) coeff = std::min<double>(std::max<double>(std::sqrt(w2 / u2), h.min_coeff), h.max_coeff);
    const double step_size = h.lr * std::sqrt(1 - std::pow(double{h.beta2}, t)) / (1 - std::pow(double{h.beta1}, t));
    for (size_t i = 0; i < p.size(); ++i) p[i] -= step_size * coeff * u[i];
  }
};

TEST(Lamb, Stage0FollowsFusedLambPerParameter) {
  for (const zero::ZeroPrecision precision : {zero::ZeroPrecision{}, zero::ZeroPrecision{DType::bf16, DType::bf16}}) {
    const char* what = precision.mixed() ? "bf16" : "fp32";
    LambModel model(precision);
    model.opt->use_lamb(model.hyper);
    model.set_parameters();
    std::vector<Reference> ref;
    for (const nn::Parameter& p : model.store.all()) {
      Reference r;
      for (int64_t k = 0; k < p.numel(); ++k) r.p.push_back(LambModel::param(p, k));
      r.m.assign(r.p.size(), 0.0);
      r.v.assign(r.p.size(), 0.0);
      ref.push_back(std::move(r));
    }
    constexpr int kSteps = 4;
    for (int t = 1; t <= kSteps; ++t) {
      model.train_step(t);
      size_t i = 0;
      for (const nn::Parameter& p : model.store.all()) {
        std::vector<double> g;
        for (int64_t k = 0; k < p.numel(); ++k) g.push_back(LambModel::grad(p, k, t));
        ref[i++].step(g, model.hyper, t);
      }
    }
    const std::vector<float> got = model.opt->full_parameters();  // unpadded, declaration order (fp32 master)
    size_t at = 0, i = 0;
    for (const nn::Parameter& p : model.store.all()) {
      for (int64_t k = 0; k < p.numel(); ++k, ++at)
        EXPECT_NEAR(got[at], ref[i].p[static_cast<size_t>(k)], 2e-6) << what << " " << p.name << "[" << k << "]";
      ++i;
    }
    EXPECT_EQ(got[at - 1], 0.0f) << "the all-zero parameter gets a zero update";
    if (!precision.mixed()) continue;
    // The model's 16-bit parameters are the master weights rounded, every piece of every parameter.
    const Tensor& flat = model.store.flat_params();
    at = 0;
    for (const nn::Parameter& p : model.store.all()) {
      std::vector<uint16_t> want(static_cast<size_t>(p.numel()));
      from_f32(want.data(), got.data() + at, DType::bf16, want.size());
      const auto* stored = static_cast<const uint16_t*>(flat.raw()) + p.offset;
      for (int64_t k = 0; k < p.numel(); ++k)
        EXPECT_EQ(stored[k], want[static_cast<size_t>(k)]) << p.name << "[" << k << "]";
      at += static_cast<size_t>(p.numel());
    }
  }
}

// A single trust ratio over the whole partition would differ: the per-parameter ratios are what is checked above,
// and here the parameters really do get different ratios (else the test could not tell the two apart).
TEST(Lamb, RatiosDifferBetweenParameters) {
  cpu::LambParams h;
  const double a = cpu::lamb_coefficient(4.0, 1.0, h), b = cpu::lamb_coefficient(1.0, 4.0, h);
  EXPECT_FLOAT_EQ(a, 2.0f);
  EXPECT_FLOAT_EQ(b, 0.5f);
  EXPECT_FLOAT_EQ(cpu::lamb_coefficient(1e6, 1.0, h), h.max_coeff);
  EXPECT_FLOAT_EQ(cpu::lamb_coefficient(1.0, 1e6, h), h.min_coeff);
  EXPECT_FLOAT_EQ(cpu::lamb_coefficient(0.0, 1.0, h), 1.0f);
}

TEST(Lamb, RefusedUnderZero) {
  LambModel model(zero::ZeroPrecision{}, 1);
  try {
    model.opt->use_lamb(model.hyper);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("LAMB runs at ZeRO stage 0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ds
