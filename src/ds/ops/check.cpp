// The ops' argument checks (check.h).
#include "ds/ops/check.h"

namespace ds::ops::detail {

void expect_defined(const char* op, const Arg& a) {
  DS_CHECK_AS(ShapeError, a.t.defined(), "[ops] {}: '{}' is an undefined tensor; pass an allocated tensor", op,
              a.name);
}

Device common_device(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (!a.t.defined()) continue;
    if (!first) {
      first = &a;
      continue;
    }
    DS_CHECK_AS(DeviceError, a.t.device() == first->t.device(),
                "[ops] {}: '{}' is {} but '{}' is {}; every tensor of one call must be on the same device: move one "
                "of them",
                op, first->name, first->t.str(), a.name, a.t.str());
  }
  DS_CHECK_AS(ShapeError, first != nullptr, "[ops] {}: no tensor given", op);
  return first->t.device();
}

void expect_dtype(const char* op, const Arg& a, DType want) {
  if (!a.t.defined()) return;
  DS_CHECK_AS(ShapeError, a.t.dtype() == want, "[ops] {}: '{}' must be {}, found {}; convert it first", op, a.name,
              dtype_name(want), a.t.str());
}

void expect_shape(const char* op, const Arg& a, const Shape& want) {
  if (!a.t.defined()) return;
  DS_CHECK_AS(ShapeError, a.t.shape() == want, "[ops] {}: '{}' must have shape {} (implied by the other arguments), "
              "found {}", op, a.name, want.str(), a.t.str());
}

void expect_numel(const char* op, const Arg& a, int64_t want) {
  if (!a.t.defined()) return;
  DS_CHECK_AS(ShapeError, a.t.numel() == want, "[ops] {}: '{}' must hold {} elements (implied by the other "
              "arguments), found {}", op, a.name, want, a.t.str());
}

void no_kernel(const char* op, Device device) {
  DS_THROW(DeviceError, "[ops] {} has no kernel for {} yet; run this on the CPU", op, device.str());
}

}  // namespace ds::ops::detail
