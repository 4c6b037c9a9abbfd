// Argument checks shared by the ops: one device for all tensors of a call, the dtype an op computes in, and shapes
// that agree. Each failure is a user-facing error naming the op and the argument (STYLE: what was expected, what
// was found).
#pragma once

#include <initializer_list>

#include "ds/core/tensor.h"

namespace ds::ops::detail {

struct Arg {
  const char* name;
  const Tensor& t;
};

// The device of the defined tensors among args (all must be defined unless optional) and checks they agree.
Device common_device(const char* op, std::initializer_list<Arg> args);
void expect_defined(const char* op, const Arg& a);
void expect_dtype(const char* op, const Arg& a, DType want);
void expect_shape(const char* op, const Arg& a, const Shape& want);
void expect_numel(const char* op, const Arg& a, int64_t want);
// An op with no kernel on `device`.
[[noreturn]] void no_kernel(const char* op, Device device);

}  // namespace ds::ops::detail
