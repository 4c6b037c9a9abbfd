// Element-wise ops (ops.h): GELU and sums, over f32 tensors of equal element counts.
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
// Defined f32 tensors of a's element count on one device; returns the device.
Device same_f32(const char* op, std::initializer_list<Arg> args) {
  const Device dev = detail::common_device(op, args);
  const int64_t n = args.begin()->t.numel();
  for (const Arg& a : args) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
    detail::expect_numel(op, a, n);
  }
  return dev;
}
size_t count(const Tensor& t) { return static_cast<size_t>(t.numel()); }
[[maybe_unused]] float* fp(const Tensor& t) { return static_cast<float*>(t.device_ptr()); }  // a device pointer
}  // namespace

void gelu_forward(const Tensor& y, const Tensor& x) {
  const Device dev = same_f32("gelu_forward", {{"y", y}, {"x", x}});
  DS_ON_CUDA("gelu_forward", dev, cuda::gelu_forward(fp(y), fp(x), x.numel(), nullptr));
  cpu::gelu_forward(y.data<float>(), x.data<float>(), count(x));
}

void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dy) {
  const Device dev = same_f32("gelu_backward", {{"dx", dx}, {"x", x}, {"dy", dy}});
  DS_ON_CUDA("gelu_backward", dev, cuda::gelu_backward(fp(dx), fp(x), fp(dy), x.numel(), nullptr));
  cpu::gelu_backward(dx.data<float>(), x.data<float>(), dy.data<float>(), count(x));
}

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const Device dev = same_f32("add", {{"out", out}, {"a", a}, {"b", b}});
  DS_ON_CUDA("add", dev, cuda::add(fp(out), fp(a), fp(b), out.numel(), nullptr));
  cpu::add(out.data<float>(), a.data<float>(), b.data<float>(), count(out));
}

void add_inplace(const Tensor& y, const Tensor& x) {
  const Device dev = same_f32("add_inplace", {{"y", y}, {"x", x}});
  DS_ON_CUDA("add_inplace", dev, cuda::add_inplace(fp(y), fp(x), y.numel(), nullptr));
  cpu::add_inplace(y.data<float>(), x.data<float>(), count(y));
}

}  // namespace ds::ops
