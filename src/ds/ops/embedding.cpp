// Token and position embeddings (ops.h): checks, then kernels/cpu/encoder.cpp. Token ids are checked against the
// vocabulary by the model (Gpt2::check_tokens), once per micro-batch, not here.
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
// x [B*T, C] with wpe [P >= T, C]; returns C.
int64_t check_positions(const char* op, const Tensor& x, const Tensor& wpe, int B, int T) {
  DS_CHECK_AS(ShapeError, wpe.ndim() == 2 && wpe.size(0) >= T, "[ops] {}: wpe must be [positions >= {}, C], found {}",
              op, T, wpe.str());
  const int64_t C = wpe.size(1);
  detail::expect_shape(op, {"x", x}, {int64_t(B) * T, C});
  return C;
}
}  // namespace

void embedding_forward(const Tensor& x, const Tensor& ids, const Tensor& wte, const Tensor& wpe, int B, int T) {
  constexpr const char* op = "embedding_forward";
  const Device dev = detail::common_device(op, {{"x", x}, {"ids", ids}, {"wte", wte}, {"wpe", wpe}});
  for (const Arg& a : {Arg{"x", x}, Arg{"ids", ids}, Arg{"wte", wte}, Arg{"wpe", wpe}}) detail::expect_defined(op, a);
  for (const Arg& a : {Arg{"x", x}, Arg{"wte", wte}, Arg{"wpe", wpe}}) detail::expect_dtype(op, a, DType::f32);
  detail::expect_dtype(op, {"ids", ids}, DType::i32);
  const int64_t C = check_positions(op, x, wpe, B, T);
  detail::expect_numel(op, {"ids", ids}, int64_t(B) * T);
  DS_CHECK_AS(ShapeError, wte.ndim() == 2 && wte.size(1) == C, "[ops] {}: wte must be [V, {}], found {}", op, C,
              wte.str());
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::encoder_forward(x.data<float>(), ids.data<int32_t>(), wte.data<float>(), wpe.data<float>(), B, T,
                       static_cast<int>(C));
}

void embedding_forward_rows(const Tensor& x, const Tensor& rows, const Tensor& wpe, int B, int T) {
  constexpr const char* op = "embedding_forward_rows";
  const Device dev = detail::common_device(op, {{"x", x}, {"rows", rows}, {"wpe", wpe}});
  for (const Arg& a : {Arg{"x", x}, Arg{"rows", rows}, Arg{"wpe", wpe}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  const int64_t C = check_positions(op, x, wpe, B, T);
  detail::expect_shape(op, {"rows", rows}, x.shape());
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::encoder_forward_rows(x.data<float>(), rows.data<float>(), wpe.data<float>(), B, T, static_cast<int>(C));
}

void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dx, const Tensor& ids, int B, int T) {
  constexpr const char* op = "embedding_backward";
  const Device dev = detail::common_device(op, {{"dwte", dwte}, {"dwpe", dwpe}, {"dx", dx}, {"ids", ids}});
  for (const Arg& a : {Arg{"dwpe", dwpe}, Arg{"dx", dx}, Arg{"ids", ids}}) detail::expect_defined(op, a);
  for (const Arg& a : {Arg{"dwte", dwte}, Arg{"dwpe", dwpe}, Arg{"dx", dx}}) detail::expect_dtype(op, a, DType::f32);
  detail::expect_dtype(op, {"ids", ids}, DType::i32);
  const int64_t C = check_positions(op, dx, dwpe, B, T);
  detail::expect_numel(op, {"ids", ids}, int64_t(B) * T);
  DS_CHECK_AS(ShapeError, !dwte.defined() || (dwte.ndim() == 2 && dwte.size(1) == C),
              "[ops] {}: dwte must be [V, {}], found {}", op, C, dwte.str());
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::encoder_backward(dwte.defined() ? dwte.data<float>() : nullptr, dwpe.data<float>(), dx.data<float>(),
                        ids.data<int32_t>(), B, T, static_cast<int>(C));
}

}  // namespace ds::ops
