// Row ops (ops.h): MoE's dispatch and combine as gathers and weighted row sums, on the CPU.
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
void check_indices(const char* op, const Tensor& index, int64_t rows) {
  const int32_t* idx = index.data<int32_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    DS_CHECK_AS(ShapeError, idx[i] < rows, "[{}] index {} = {} is past the {} rows", op, i, idx[i], rows);
}
// rows x C f32 matrices and i32 / f32 vectors of the sizes the others imply; returns C.
int64_t check_rows(const char* op, const Tensor& out, const Tensor& x) {
  detail::expect_dtype(op, {"out", out}, DType::f32);
  detail::expect_dtype(op, {"x", x}, DType::f32);
  DS_CHECK_AS(ShapeError, out.ndim() == 2 && x.ndim() == 2 && out.size(1) == x.size(1), "[{}] expected [n, C] and "
              "[m, C] rows of one width, got {} and {}", op, out.str(), x.str());
  return out.size(1);
}
}  // namespace

void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index) {
  const Device dev = detail::common_device("gather_rows", {{"out", out}, {"x", x}, {"index", index}});
  const int64_t C = check_rows("gather_rows", out, x);
  detail::expect_dtype("gather_rows", {"index", index}, DType::i32);
  detail::expect_numel("gather_rows", {"index", index}, out.size(0));
  if (!dev.is_cpu()) detail::no_kernel("gather_rows", dev);
  check_indices("gather_rows", index, x.size(0));
  cpu::gather_rows(out.data<float>(), x.data<float>(), index.data<int32_t>(), out.size(0), C);
}

void combine_rows(const Tensor& out, const Tensor& y, const Tensor& row, const Tensor& weight) {
  const Device dev = detail::common_device("combine_rows", {{"out", out}, {"y", y}, {"row", row}});
  const int64_t C = check_rows("combine_rows", out, y), S = out.size(0);
  detail::expect_dtype("combine_rows", {"row", row}, DType::i32);
  DS_CHECK_AS(ShapeError, S > 0 && row.numel() % S == 0, "[combine_rows] {} row indices are not k per row of {}",
              row.numel(), out.str());
  if (weight.defined()) detail::expect_numel("combine_rows", {"weight", weight}, row.numel());
  if (!dev.is_cpu()) detail::no_kernel("combine_rows", dev);
  check_indices("combine_rows", row, y.size(0));
  cpu::combine_rows(out.data<float>(), y.data<float>(), row.data<int32_t>(),
                    weight.defined() ? weight.data<float>() : nullptr, S, static_cast<int>(row.numel() / S), C);
}

void combine_rows_backward(const Tensor& dy, const Tensor& dweight, const Tensor& dout, const Tensor& y,
                           const Tensor& row, const Tensor& weight) {
  const Device dev = detail::common_device("combine_rows_backward", {{"dy", dy}, {"dweight", dweight},
                                                                     {"dout", dout}, {"y", y}, {"row", row},
                                                                     {"weight", weight}});
  const int64_t C = check_rows("combine_rows_backward", dout, y), S = dout.size(0);
  check_rows("combine_rows_backward", dy, y);
  DS_CHECK_AS(ShapeError, dy.size(0) == y.size(0) && S > 0 && row.numel() % S == 0, "[combine_rows_backward] dy {} "
              "must match y {}, and the {} row indices be k per row of {}", dy.str(), y.str(), row.numel(),
              dout.str());
  detail::expect_numel("combine_rows_backward", {"weight", weight}, row.numel());
  detail::expect_numel("combine_rows_backward", {"dweight", dweight}, row.numel());
  if (!dev.is_cpu()) detail::no_kernel("combine_rows_backward", dev);
  check_indices("combine_rows_backward", row, y.size(0));
  cpu::combine_rows_backward(dy.data<float>(), dweight.data<float>(), dout.data<float>(), y.data<float>(),
                             row.data<int32_t>(), weight.data<float>(), S, static_cast<int>(row.numel() / S), C);
}

}  // namespace ds::ops
