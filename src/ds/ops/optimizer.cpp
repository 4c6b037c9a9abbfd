// The optimizer ops (ops.h): Adam over one chunk of parameters, LAMB's passes over one parameter, and the gradient
// norm's sum of squares, with the argument checks of every op; 16-bit gradients are widened a piece at a time.
#include <algorithm>

#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cuda/launch.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
bool is_float(DType d) { return d == DType::f32 || d == DType::bf16 || d == DType::f16; }
float* fp(const Tensor& t) { return static_cast<float*>(t.device_ptr()); }  // a device pointer
}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const cpu::AdamParams& hyper, float grad_scale, const Tensor& wide) {
  const char* op = "adamw_step";
  const Device dev = detail::common_device(op, {{"param", param}, {"grad", grad}, {"m", m}, {"v", v}});
  const int64_t n = param.numel();
  for (const Arg& a : {Arg{"param", param}, Arg{"m", m}, Arg{"v", v}}) {
    detail::expect_dtype(op, a, DType::f32);
    detail::expect_numel(op, a, n);
  }
  detail::expect_numel(op, {"grad", grad}, n);
  DS_CHECK_AS(ShapeError, is_float(grad.dtype()), "[ops] adamw_step: grad must be f32, bf16 or f16, found {}; "
              "gradients are kept in a floating-point dtype", grad.str());
  const auto count = static_cast<size_t>(n);
  if (!dev.is_cpu()) {
    DS_CHECK_AS(ShapeError, grad.dtype() == DType::f32, "[ops] adamw_step on {} takes an f32 grad, found {}; keep "
                "fp32 gradients on the GPU (16-bit gradients are widened on the CPU only)", dev.str(), grad.str());
    return cuda::adamw_step(dev.index, fp(param), fp(grad), fp(m), fp(v), n, cpu::adam_coeffs(hyper, grad_scale));
  }
  if (grad.dtype() == DType::f32) {
    cpu::adamw_step(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), count, hyper,
                    grad_scale);
    return;
  }
  detail::expect_defined(op, {"wide", wide});
  detail::expect_dtype(op, {"wide", wide}, DType::f32);
  DS_ASSERT(wide.numel() >= n, "adamw_step: wide holds {} elements, grad {}", wide.numel(), n);  // the caller's buffer
  Tensor g = wide.narrow(0, n);
  g.copy_from(grad);
  cpu::adamw_step(param.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), count, hyper, grad_scale);
}

void adamw_step_mixed(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param,
                      const cpu::AdamParams& hyper, float grad_scale) {
  const char* op = "adamw_step_mixed";
  const Device dev =
      detail::common_device(op, {{"master", master}, {"grad", grad}, {"m", m}, {"v", v}, {"param", param}});
  DS_CHECK_AS(DeviceError, dev.is_cpu(), "[ops] adamw_step_mixed runs on the CPU only, found {}; on a GPU use "
              "adamw_step on fp32 tensors and convert the master", dev.str());
  const int64_t n = master.numel();
  for (const Arg& a : {Arg{"master", master}, Arg{"m", m}, Arg{"v", v}}) {
    detail::expect_dtype(op, a, DType::f32);
    detail::expect_numel(op, a, n);
  }
  detail::expect_numel(op, {"grad", grad}, n);
  detail::expect_numel(op, {"param", param}, n);
  DS_CHECK_AS(ShapeError, is_float(grad.dtype()), "[ops] adamw_step_mixed: grad must be f32, bf16 or f16, found {}",
              grad.str());
  DS_CHECK_AS(ShapeError, param.dtype() == DType::bf16 || param.dtype() == DType::f16,
              "[ops] adamw_step_mixed: param must be bf16 or f16, found {}", param.str());
  cpu::adamw_step_mixed(master.data<float>(), grad.raw(), grad.dtype(), m.data<float>(), v.data<float>(), param.raw(),
                        param.dtype(), static_cast<size_t>(n), hyper, grad_scale);
}

double sum_squares(const Tensor& x) {
  const char* op = "sum_squares";
  const Device dev = detail::common_device(op, {{"x", x}});
  DS_CHECK_AS(ShapeError, is_float(x.dtype()), "[ops] sum_squares: x must be f32, bf16 or f16, found {}; pass a "
              "floating-point tensor", x.str());
  if (!dev.is_cpu()) {
    DS_CHECK_AS(ShapeError, x.dtype() == DType::f32, "[ops] sum_squares on {} takes f32, found {}; keep fp32 "
                "gradients on the GPU", dev.str(), x.str());
    return cuda::sum_squares(dev.index, fp(x), x.numel());
  }
  const auto n = static_cast<size_t>(x.numel());
  if (x.dtype() == DType::f32) return cpu::sum_squares(x.data<float>(), n);
  constexpr size_t kPiece = 4096;  // widened on the stack a piece at a time
  float piece[kPiece];
  double total = 0;
  const auto* src = static_cast<const uint16_t*>(x.raw());
  for (size_t i = 0; i < n; i += kPiece) {
    const size_t len = std::min(kPiece, n - i);
    cpu::to_f32(piece, src + i, x.dtype(), len);
    total += cpu::sum_squares(piece, len);
  }
  return total;
}

namespace {

// The checks every LAMB pass (and every compressed optimizer's pass) shares: fp32 param-sized tensors on the CPU
// (no GPU kernel yet).
int64_t lamb_args(const char* op, std::initializer_list<Arg> state) {
  const Device dev = detail::common_device(op, state);
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  const int64_t n = state.begin()->t.numel();
  for (const Arg& a : state) {
    detail::expect_dtype(op, a, DType::f32);
    detail::expect_numel(op, a, n);
  }
  return n;
}

// A CPU step's gradient of n elements in fp32: grad itself, or a 16-bit grad widened into `wide` (checked).
Tensor fp32_grad(const char* op, const Tensor& grad, const Tensor& m, const Tensor& wide, int64_t n) {
  detail::common_device(op, {{"grad", grad}, {"m", m}});
  detail::expect_numel(op, {"grad", grad}, n);
  DS_CHECK_AS(ShapeError, is_float(grad.dtype()), "[ops] {}: grad must be f32, bf16 or f16, found {}", op,
              grad.str());
  if (grad.dtype() == DType::f32) return grad;
  detail::expect_defined(op, {"wide", wide});
  detail::expect_dtype(op, {"wide", wide}, DType::f32);
  DS_ASSERT(wide.numel() >= n, "{}: wide holds {} elements, grad {}", op, wide.numel(), n);
  Tensor g = wide.narrow(0, n);
  g.copy_from(grad);
  return g;
}

}  // namespace

void lamb_moments(const Tensor& grad, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper,
                  float grad_scale, const Tensor& wide) {
  const char* op = "lamb_moments";
  const int64_t n = lamb_args(op, {{"m", m}, {"v", v}});
  const Tensor g = fp32_grad(op, grad, m, wide, n);
  cpu::lamb_moments(g.data<float>(), m.data<float>(), v.data<float>(), static_cast<size_t>(n), hyper, grad_scale);
}

double lamb_update_sum_squares(const Tensor& param, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper) {
  const int64_t n = lamb_args("lamb_update_sum_squares", {{"param", param}, {"m", m}, {"v", v}});
  return cpu::lamb_update_sum_squares(param.data<float>(), m.data<float>(), v.data<float>(), static_cast<size_t>(n),
                                      hyper);
}

void lamb_apply(const Tensor& param, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper, float step) {
  const int64_t n = lamb_args("lamb_apply", {{"param", param}, {"m", m}, {"v", v}});
  cpu::lamb_apply(param.data<float>(), m.data<float>(), v.data<float>(), static_cast<size_t>(n), hyper, step);
}

void momentum_update(const Tensor& m, const Tensor& grad, float beta1, float grad_scale, const Tensor& wide) {
  const char* op = "momentum_update";
  const int64_t n = lamb_args(op, {{"m", m}});
  const Tensor g = fp32_grad(op, grad, m, wide, n);
  cpu::momentum_update(m.data<float>(), g.data<float>(), static_cast<size_t>(n), beta1, grad_scale);
}

void frozen_adam_apply(const Tensor& param, const Tensor& m, const Tensor& v, float lr, float eps, float weight_decay) {
  const int64_t n = lamb_args("frozen_adam_apply", {{"param", param}, {"m", m}, {"v", v}});
  cpu::frozen_adam_apply(param.data<float>(), m.data<float>(), v.data<float>(), static_cast<size_t>(n), lr, eps,
                         weight_decay);
}

void local_steps_delta(const Tensor& delta, const Tensor& param, const Tensor& base, const Tensor& v, float eps) {
  const int64_t n = lamb_args("local_steps_delta", {{"delta", delta}, {"param", param}, {"base", base}, {"v", v}});
  cpu::local_steps_delta(delta.data<float>(), param.data<float>(), base.data<float>(), v.data<float>(),
                         static_cast<size_t>(n), eps);
}

void local_steps_apply(const Tensor& param, const Tensor& m, const Tensor& v, const Tensor& base, const Tensor& avg,
                       float eps, float lrs) {
  const int64_t n =
      lamb_args("local_steps_apply", {{"param", param}, {"m", m}, {"v", v}, {"base", base}, {"avg", avg}});
  cpu::local_steps_apply(param.data<float>(), m.data<float>(), v.data<float>(), base.data<float>(), avg.data<float>(),
                         static_cast<size_t>(n), eps, lrs);
}

}  // namespace ds::ops
