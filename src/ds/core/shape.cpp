// Shape's dimension checks and printing (shape.h).
#include "ds/core/shape.h"

#include "ds/core/error.h"

namespace ds {

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) push_back(d);
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

void Shape::push_back(int64_t d) {
  DS_CHECK_AS(ShapeError, ndim_ < kMaxDims, "[tensor] at most {} dimensions are supported", kMaxDims);
  DS_CHECK_AS(ShapeError, d >= 0, "[tensor] dimension sizes must be >= 0, found {}", d);
  dims_[ndim_++] = d;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
  return s + "]";
}

}  // namespace ds
