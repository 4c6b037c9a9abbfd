// Layer norm (ops.h): checks, then the device's kernels (CPU: kernels/cpu/layernorm.cpp).
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

void layernorm_forward(const Tensor& y, const Tensor& stats, const Tensor& x, const Tensor& w, const Tensor& b) {
  constexpr const char* op = "layernorm_forward";
  const Device dev = detail::common_device(op, {{"y", y}, {"stats", stats}, {"x", x}, {"w", w}, {"b", b}});
  for (const Arg& a : {Arg{"y", y}, Arg{"stats", stats}, Arg{"x", x}, Arg{"w", w}, Arg{"b", b}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  DS_CHECK_AS(ShapeError, x.ndim() == 2, "[ops] {}: x must be [N, C], found {}", op, x.str());
  const int64_t N = x.size(0), C = x.size(1);
  detail::expect_shape(op, {"y", y}, x.shape());
  detail::expect_shape(op, {"w", w}, {C});
  detail::expect_shape(op, {"b", b}, {C});
  detail::expect_shape(op, {"stats", stats}, {2, N});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  float* s = stats.data<float>();
  cpu::layernorm_forward(y.data<float>(), s, s + N, x.data<float>(), w.data<float>(), b.data<float>(),
                         static_cast<int>(N), static_cast<int>(C));
}

void layernorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                        const Tensor& w, const Tensor& stats) {
  constexpr const char* op = "layernorm_backward";
  const Device dev = detail::common_device(
      op, {{"dx", dx}, {"dw", dw}, {"db", db}, {"dy", dy}, {"x", x}, {"w", w}, {"stats", stats}});
  for (const Arg& a : {Arg{"dy", dy}, Arg{"x", x}, Arg{"w", w}, Arg{"stats", stats}}) detail::expect_defined(op, a);
  for (const Arg& a : {Arg{"dx", dx}, Arg{"dw", dw}, Arg{"db", db}, Arg{"dy", dy}, Arg{"x", x}, Arg{"w", w},
                       Arg{"stats", stats}})
    detail::expect_dtype(op, a, DType::f32);
  DS_CHECK_AS(ShapeError, dw.defined() == db.defined() && (dx.defined() || dw.defined()), "[ops] {}: give dx, or "
              "dw and db, or all three", op);
  DS_CHECK_AS(ShapeError, x.ndim() == 2, "[ops] {}: x must be [N, C], found {}", op, x.str());
  const int64_t N = x.size(0), C = x.size(1);
  for (const Arg& a : {Arg{"dx", dx}, Arg{"dy", dy}}) detail::expect_shape(op, a, x.shape());
  for (const Arg& a : {Arg{"w", w}, Arg{"dw", dw}, Arg{"db", db}}) detail::expect_shape(op, a, {C});
  detail::expect_shape(op, {"stats", stats}, {2, N});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  const float* s = stats.data<float>();
  cpu::layernorm_backward(dx.defined() ? dx.data<float>() : nullptr, dw.defined() ? dw.data<float>() : nullptr,
                          db.defined() ? db.data<float>() : nullptr, dy.data<float>(), x.data<float>(),
                          w.data<float>(), s, s + N, static_cast<int>(N), static_cast<int>(C));
}

}  // namespace ds::ops
