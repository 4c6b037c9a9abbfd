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

namespace {
// rows/dx [N, C], table [Vl, C], ids [N] i32; returns {N, C}.
std::pair<int64_t, int64_t> check_vocab_rows(const char* op, const Arg& rows, const Arg& table, const Tensor& ids) {
  const Device dev = detail::common_device(op, {rows, table, {"ids", ids}});
  for (const Arg& a : {rows, table, Arg{"ids", ids}}) detail::expect_defined(op, a);
  for (const Arg& a : {rows, table}) detail::expect_dtype(op, a, DType::f32);
  detail::expect_dtype(op, {"ids", ids}, DType::i32);
  DS_CHECK_AS(ShapeError, rows.t.ndim() == 2 && table.t.ndim() == 2 && rows.t.size(1) == table.t.size(1),
              "[ops] {}: '{}' must be [N, C] and '{}' [rows, C], found {} and {}", op, rows.name, table.name,
              rows.t.str(), table.t.str());
  detail::expect_numel(op, {"ids", ids}, rows.t.size(0));
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  return {rows.t.size(0), rows.t.size(1)};
}
int i32(int64_t v) { return static_cast<int>(v); }
}  // namespace

void vocab_rows_forward(const Tensor& rows, const Tensor& table, const Tensor& ids, int64_t begin) {
  const auto [N, C] = check_vocab_rows("vocab_rows_forward", {"rows", rows}, {"table", table}, ids);
  cpu::vocab_rows_forward(rows.data<float>(), table.data<float>(), ids.data<int32_t>(), i32(N), i32(C), i32(begin),
                          i32(table.size(0)));
}

void vocab_rows_backward(const Tensor& dtable, const Tensor& dx, const Tensor& ids, int64_t begin) {
  const auto [N, C] = check_vocab_rows("vocab_rows_backward", {"dx", dx}, {"dtable", dtable}, ids);
  cpu::vocab_rows_backward(dtable.data<float>(), dx.data<float>(), ids.data<int32_t>(), i32(N), i32(C), i32(begin),
                           i32(dtable.size(0)));
}

}  // namespace ds::ops
