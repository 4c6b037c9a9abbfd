// Element-wise ops (ops.h): GELU and sums, over f32 tensors of equal element counts, on the CPU or a GPU.
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cuda/launch.h"
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
float* fp(const Tensor& t) { return static_cast<float*>(t.device_ptr()); }  // a device pointer
}  // namespace

void gelu_forward(const Tensor& y, const Tensor& x) {
  const Device dev = same_f32("gelu_forward", {{"y", y}, {"x", x}});
  if (!dev.is_cpu()) return cuda::gelu_forward(dev.index, fp(y), fp(x), x.numel());
  cpu::gelu_forward(y.data<float>(), x.data<float>(), count(x));
}

void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dy) {
  const Device dev = same_f32("gelu_backward", {{"dx", dx}, {"x", x}, {"dy", dy}});
  if (!dev.is_cpu()) return cuda::gelu_backward(dev.index, fp(dx), fp(x), fp(dy), x.numel());
  cpu::gelu_backward(dx.data<float>(), x.data<float>(), dy.data<float>(), count(x));
}

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const Device dev = same_f32("add", {{"out", out}, {"a", a}, {"b", b}});
  if (!dev.is_cpu()) return cuda::add(dev.index, fp(out), fp(a), fp(b), out.numel());
  cpu::add(out.data<float>(), a.data<float>(), b.data<float>(), count(out));
}

void add_inplace(const Tensor& y, const Tensor& x) {
  const Device dev = same_f32("add_inplace", {{"y", y}, {"x", x}});
  if (!dev.is_cpu()) return cuda::add(dev.index, fp(y), fp(y), fp(x), y.numel());
  cpu::add_inplace(y.data<float>(), x.data<float>(), count(y));
}

}  // namespace ds::ops
