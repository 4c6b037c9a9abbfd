// Causal self-attention for training (ops.h): checks, then kernels/cpu/attention.cpp.
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
void check_heads(const char* op, int64_t C, int NH) {
  DS_CHECK_AS(ShapeError, NH > 0 && C % NH == 0, "[ops] {}: {} channels do not split into {} heads", op, C, NH);
}
}  // namespace

void attention_forward(const Tensor& y, const Tensor& att, const Tensor& qkv, int B, int T, int NH) {
  constexpr const char* op = "attention_forward";
  const Device dev = detail::common_device(op, {{"y", y}, {"att", att}, {"qkv", qkv}});
  for (const Arg& a : {Arg{"y", y}, Arg{"att", att}, Arg{"qkv", qkv}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  DS_CHECK_AS(ShapeError, y.ndim() == 2, "[ops] {}: y must be [B*T, C], found {}", op, y.str());
  const int64_t C = y.size(1), N = int64_t(B) * T;
  check_heads(op, C, NH);
  detail::expect_shape(op, {"y", y}, {N, C});
  detail::expect_shape(op, {"qkv", qkv}, {N, 3 * C});
  detail::expect_shape(op, {"att", att}, {B, NH, T, T});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::attention_forward(y.data<float>(), att.data<float>(), qkv.data<float>(), B, T, static_cast<int>(C), NH);
}

int64_t attention_backward_scratch(int B, int T, int C, int NH) {
  return static_cast<int64_t>(cpu::attention_backward_scratch_floats(B, T, C, NH));
}

void attention_backward(const Tensor& dqkv, const Tensor& dy, const Tensor& qkv, const Tensor& att,
                        const Tensor& scratch, int B, int T, int NH) {
  constexpr const char* op = "attention_backward";
  const Device dev = detail::common_device(
      op, {{"dqkv", dqkv}, {"dy", dy}, {"qkv", qkv}, {"att", att}, {"scratch", scratch}});
  for (const Arg& a : {Arg{"dqkv", dqkv}, Arg{"dy", dy}, Arg{"qkv", qkv}, Arg{"att", att}, Arg{"scratch", scratch}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  DS_CHECK_AS(ShapeError, dy.ndim() == 2, "[ops] {}: dy must be [B*T, C], found {}", op, dy.str());
  const int64_t C = dy.size(1), N = int64_t(B) * T;
  check_heads(op, C, NH);
  detail::expect_shape(op, {"dy", dy}, {N, C});
  detail::expect_shape(op, {"qkv", qkv}, {N, 3 * C});
  detail::expect_shape(op, {"dqkv", dqkv}, {N, 3 * C});
  detail::expect_shape(op, {"att", att}, {B, NH, T, T});
  const int64_t need = attention_backward_scratch(B, T, static_cast<int>(C), NH);
  DS_CHECK_AS(ShapeError, scratch.numel() >= need, "[ops] {}: scratch holds {} floats, needs {}", op, scratch.numel(),
              need);
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::attention_backward(dqkv.data<float>(), dy.data<float>(), qkv.data<float>(), att.data<float>(),
                          scratch.data<float>(), B, T, static_cast<int>(C), NH);
}

}  // namespace ds::ops
