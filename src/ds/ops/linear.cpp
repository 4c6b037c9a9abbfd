// Linear layers (ops.h): checks, then the device's GEMM kernels (CPU: OpenBLAS through kernels/cpu/matmul.cpp).
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
int dim(const Tensor& t, int d) { return static_cast<int>(t.size(d)); }
}  // namespace

void linear_forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  constexpr const char* op = "linear_forward";
  const Device dev = detail::common_device(op, {{"y", y}, {"x", x}, {"w", w}, {"b", b}});
  for (const Arg& a : {Arg{"y", y}, Arg{"x", x}, Arg{"w", w}}) detail::expect_defined(op, a);
  for (const Arg& a : {Arg{"y", y}, Arg{"x", x}, Arg{"w", w}, Arg{"b", b}}) detail::expect_dtype(op, a, DType::f32);
  DS_CHECK_AS(ShapeError, x.ndim() == 2 && w.ndim() == 2, "[ops] {}: x and w must be 2-D, found {} and {}", op,
              x.str(), w.str());
  const int64_t N = x.size(0), IC = x.size(1), OC = w.size(1);
  detail::expect_shape(op, {"w", w}, {IC, OC});
  detail::expect_shape(op, {"y", y}, {N, OC});
  detail::expect_shape(op, {"b", b}, {OC});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::matmul_forward(y.data<float>(), x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr,
                      dim(x, 0), dim(x, 1), dim(w, 1));
}

void linear_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                     const Tensor& w) {
  constexpr const char* op = "linear_backward";
  const Device dev =
      detail::common_device(op, {{"dx", dx}, {"dw", dw}, {"db", db}, {"dy", dy}, {"x", x}, {"w", w}});
  for (const Arg& a : {Arg{"dy", dy}, Arg{"x", x}, Arg{"w", w}}) detail::expect_defined(op, a);
  DS_CHECK_AS(ShapeError, dx.defined() || dw.defined(), "[ops] {}: give dx, dw or both", op);
  DS_CHECK_AS(ShapeError, !db.defined() || dw.defined(), "[ops] {}: db comes with dw", op);
  for (const Arg& a : {Arg{"dx", dx}, Arg{"dw", dw}, Arg{"db", db}, Arg{"dy", dy}, Arg{"x", x}, Arg{"w", w}})
    detail::expect_dtype(op, a, DType::f32);
  DS_CHECK_AS(ShapeError, x.ndim() == 2 && w.ndim() == 2, "[ops] {}: x and w must be 2-D, found {} and {}", op,
              x.str(), w.str());
  const int64_t N = x.size(0), IC = x.size(1), OC = w.size(1);
  detail::expect_shape(op, {"w", w}, {IC, OC});
  detail::expect_shape(op, {"dw", dw}, {IC, OC});
  detail::expect_shape(op, {"dy", dy}, {N, OC});
  detail::expect_shape(op, {"dx", dx}, {N, IC});
  detail::expect_shape(op, {"db", db}, {OC});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::matmul_backward(dx.defined() ? dx.data<float>() : nullptr, dw.defined() ? dw.data<float>() : nullptr,
                       db.defined() ? db.data<float>() : nullptr, dy.data<float>(), x.data<float>(), w.data<float>(),
                       dim(x, 0), dim(x, 1), dim(w, 1));
}

}  // namespace ds::ops
