// The tied LM head and its cross-entropy (ops.h): checks, then kernels/cpu/classifier.cpp.
#include "ds/kernels/cpu/kernels.h"
#include "ds/ops/check.h"
#include "ds/ops/ops.h"

namespace ds::ops {

using detail::Arg;

namespace {
// h [N, C] and a weight [rows, C]; returns {N, C}.
std::pair<int64_t, int64_t> check_head(const char* op, const Tensor& h, const Arg& w) {
  DS_CHECK_AS(ShapeError, h.ndim() == 2, "[ops] {}: h must be [N, C], found {}", op, h.str());
  DS_CHECK_AS(ShapeError, w.t.ndim() == 2 && w.t.size(1) == h.size(1), "[ops] {}: '{}' must be [rows, {}], found {}",
              op, w.name, h.size(1), w.t.str());
  return {h.size(0), h.size(1)};
}
int i(int64_t v) { return static_cast<int>(v); }
}  // namespace

int64_t classifier_scratch(int N, int V) { return static_cast<int64_t>(cpu::classifier_scratch_floats(N, V)); }

double classifier(const Tensor& dh, const Tensor& dwte, const Tensor& h, const Tensor& wte, const Tensor& targets,
                  float grad_scale, const Tensor& scratch) {
  constexpr const char* op = "classifier";
  const Device dev = detail::common_device(
      op, {{"dh", dh}, {"dwte", dwte}, {"h", h}, {"wte", wte}, {"targets", targets}, {"scratch", scratch}});
  for (const Arg& a : {Arg{"h", h}, Arg{"wte", wte}, Arg{"targets", targets}, Arg{"scratch", scratch}})
    detail::expect_defined(op, a);
  for (const Arg& a : {Arg{"dh", dh}, Arg{"dwte", dwte}, Arg{"h", h}, Arg{"wte", wte}, Arg{"scratch", scratch}})
    detail::expect_dtype(op, a, DType::f32);
  detail::expect_dtype(op, {"targets", targets}, DType::i32);
  const auto [N, C] = check_head(op, h, {"wte", wte});
  const int64_t V = wte.size(0);
  DS_CHECK_AS(ShapeError, dh.defined() == dwte.defined(), "[ops] {}: give both dh and dwte (training) or neither", op);
  detail::expect_shape(op, {"dh", dh}, h.shape());
  detail::expect_shape(op, {"dwte", dwte}, wte.shape());
  detail::expect_numel(op, {"targets", targets}, N);
  DS_CHECK_AS(ShapeError, scratch.numel() >= classifier_scratch(i(N), i(V)), "[ops] {}: scratch holds {} floats, "
              "needs {}", op, scratch.numel(), classifier_scratch(i(N), i(V)));
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  return cpu::classifier_forward_backward(dh.defined() ? dh.data<float>() : nullptr,
                                          dwte.defined() ? dwte.data<float>() : nullptr, nullptr, h.data<float>(),
                                          wte.data<float>(), targets.data<int32_t>(), grad_scale,
                                          scratch.data<float>(), i(N), i(C), i(V));
}

void logits(const Tensor& logits, const Tensor& h, const Tensor& wte) {
  constexpr const char* op = "logits";
  const Device dev = detail::common_device(op, {{"logits", logits}, {"h", h}, {"wte", wte}});
  for (const Arg& a : {Arg{"logits", logits}, Arg{"h", h}, Arg{"wte", wte}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  const auto [N, C] = check_head(op, h, {"wte", wte});
  detail::expect_shape(op, {"logits", logits}, {N, wte.size(0)});
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::logits_forward(logits.data<float>(), h.data<float>(), wte.data<float>(), i(N), i(C), i(wte.size(0)));
}

void logits_rows(const Tensor& logits, const Tensor& h, const Tensor& w, int64_t row_begin) {
  constexpr const char* op = "logits_rows";
  const Device dev = detail::common_device(op, {{"logits", logits}, {"h", h}, {"w", w}});
  for (const Arg& a : {Arg{"logits", logits}, Arg{"h", h}, Arg{"w", w}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  const auto [N, C] = check_head(op, h, {"w", w});
  DS_CHECK_AS(ShapeError, logits.ndim() == 2 && logits.size(0) == N, "[ops] {}: logits must be [{}, V], found {}",
              op, N, logits.str());
  const int64_t V = logits.size(1);
  DS_CHECK_AS(ShapeError, row_begin >= 0 && row_begin + w.size(0) <= V, "[ops] {}: rows [{}, {}) are outside the "
              "vocabulary of {}", op, row_begin, row_begin + w.size(0), V);
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::logits_rows_forward(logits.data<float>(), h.data<float>(), w.data<float>(), i(N), i(C), i(V), i(row_begin),
                           i(w.size(0)));
}

double softmax_xent(const Tensor& logits, const Tensor& targets, bool want_grad, float grad_scale) {
  constexpr const char* op = "softmax_xent";
  const Device dev = detail::common_device(op, {{"logits", logits}, {"targets", targets}});
  detail::expect_defined(op, {"logits", logits});
  detail::expect_defined(op, {"targets", targets});
  detail::expect_dtype(op, {"logits", logits}, DType::f32);
  detail::expect_dtype(op, {"targets", targets}, DType::i32);
  DS_CHECK_AS(ShapeError, logits.ndim() == 2, "[ops] {}: logits must be [N, V], found {}", op, logits.str());
  detail::expect_numel(op, {"targets", targets}, logits.size(0));
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  return cpu::softmax_xent_rows(logits.data<float>(), nullptr, targets.data<int32_t>(), want_grad, grad_scale,
                                i(logits.size(0)), i(logits.size(1)));
}

void classifier_rows_backward(const Tensor& dh, const Tensor& dw, const Tensor& dlogits, const Tensor& h,
                              const Tensor& w, int64_t row_begin) {
  constexpr const char* op = "classifier_rows_backward";
  const Device dev =
      detail::common_device(op, {{"dh", dh}, {"dw", dw}, {"dlogits", dlogits}, {"h", h}, {"w", w}});
  for (const Arg& a : {Arg{"dh", dh}, Arg{"dw", dw}, Arg{"dlogits", dlogits}, Arg{"h", h}, Arg{"w", w}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  const auto [N, C] = check_head(op, h, {"w", w});
  detail::expect_shape(op, {"dh", dh}, h.shape());
  detail::expect_shape(op, {"dw", dw}, w.shape());
  DS_CHECK_AS(ShapeError, dlogits.ndim() == 2 && dlogits.size(0) == N, "[ops] {}: dlogits must be [{}, V], found {}",
              op, N, dlogits.str());
  const int64_t V = dlogits.size(1);
  DS_CHECK_AS(ShapeError, row_begin >= 0 && row_begin + w.size(0) <= V, "[ops] {}: rows [{}, {}) are outside the "
              "vocabulary of {}", op, row_begin, row_begin + w.size(0), V);
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  cpu::classifier_rows_backward(dh.data<float>(), dw.data<float>(), dlogits.data<float>(), h.data<float>(),
                                w.data<float>(), i(N), i(C), i(V), i(row_begin), i(w.size(0)));
}

namespace {
// logits [N, Vl] f32, stats [3, N] f32, targets [N] i32 (when given); returns {N, Vl}.
std::pair<int64_t, int64_t> check_vocab_xent(const char* op, const Tensor& logits, const Tensor& stats,
                                             const Tensor* targets) {
  const Device dev = detail::common_device(op, {{"logits", logits}, {"stats", stats}});
  for (const Arg& a : {Arg{"logits", logits}, Arg{"stats", stats}}) {
    detail::expect_defined(op, a);
    detail::expect_dtype(op, a, DType::f32);
  }
  DS_CHECK_AS(ShapeError, logits.ndim() == 2, "[ops] {}: logits must be [N, V], found {}", op, logits.str());
  const int64_t N = logits.size(0);
  detail::expect_numel(op, {"stats", stats}, 3 * N);
  if (targets) {
    detail::expect_defined(op, {"targets", *targets});
    detail::expect_dtype(op, {"targets", *targets}, DType::i32);
    detail::expect_numel(op, {"targets", *targets}, N);
    detail::common_device(op, {{"logits", logits}, {"targets", *targets}});
  }
  if (!dev.is_cpu()) detail::no_kernel(op, dev);
  return {N, logits.size(1)};
}
}  // namespace

void vocab_xent_max(const Tensor& logits, const Tensor& stats) {
  const auto [N, V] = check_vocab_xent("vocab_xent_max", logits, stats, nullptr);
  cpu::vocab_xent_max(logits.data<float>(), stats.data<float>(), i(N), i(V));
}

void vocab_xent_sums(const Tensor& logits, const Tensor& stats, const Tensor& targets, int64_t begin) {
  const auto [N, V] = check_vocab_xent("vocab_xent_sums", logits, stats, &targets);
  cpu::vocab_xent_sums(logits.data<float>(), stats.data<float>(), targets.data<int32_t>(), i(N), i(V), i(begin));
}

double vocab_xent_finish(const Tensor& logits, const Tensor& stats, const Tensor& targets, int64_t begin,
                         bool want_grad, float grad_scale) {
  const auto [N, V] = check_vocab_xent("vocab_xent_finish", logits, stats, &targets);
  return cpu::vocab_xent_finish(logits.data<float>(), stats.data<float>(), targets.data<int32_t>(), want_grad,
                                grad_scale, i(N), i(V), i(begin));
}

}  // namespace ds::ops
