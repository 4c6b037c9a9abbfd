// Flat parameter/gradient buffers and name lookup.
#include "ds/nn/parameter.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "ds/core/strings.h"

namespace ds::nn {

size_t ParameterStore::begin_unit(const std::string& name, const Module* owner) {
  DS_ASSERT(!materialized(), "unit {} started after materialize()", name);
  units_.push_back(ParamUnit{owner, name, 0, 0, 0, {}, nullptr, 0, 0});
  after_slices_ = false;
  return units_.size() - 1;
}

Parameter* ParameterStore::add(const std::string& name, const Shape& shape) {
  DS_ASSERT(!materialized(), "parameter {} declared after materialize()", name);
  DS_ASSERT(find(name) == nullptr, "parameter {} declared twice", name);
  DS_ASSERT(!after_slices_, "parameter {} declared in the last slice unit of a sliced parameter", name);
  if (units_.empty()) begin_unit("");
  Parameter& p = params_.emplace_back();
  p.name = name;
  p.shape = shape;
  numel_ += shape.numel();
  units_.back().params.push_back(&p);
  units_.back().numel += shape.numel();
  return &p;
}

Parameter* ParameterStore::add_sliced(const std::string& name, const Shape& shape, int64_t rows_per_unit) {
  DS_ASSERT(shape.ndim() == 2 && rows_per_unit >= 1, "sliced parameter {} needs 2 dims and >= 1 row per unit",
            name);
  DS_ASSERT(!materialized() && find(name) == nullptr, "parameter {} declared twice or after materialize()", name);
  Parameter& p = params_.emplace_back();
  p.name = name;
  p.shape = shape;
  numel_ += shape.numel();
  const int64_t rows = shape[0], cols = shape[1];
  for (int64_t a = 0; a < rows; a += rows_per_unit) {
    const int64_t b = std::min(rows, a + rows_per_unit);
    begin_unit(name + "[" + std::to_string(a) + ":" + std::to_string(b) + "]");
    ParamUnit& u = units_.back();
    u.sliced = &p;
    u.row_begin = a, u.row_end = b;
    u.numel = (b - a) * cols;
  }
  after_slices_ = true;
  return &p;
}

int64_t ParameterStore::slice_rows(int64_t rows, int64_t cols, int64_t target_numel, int64_t alignment) {
  const int64_t step = alignment / std::gcd(cols, alignment);  // rows * cols is then a multiple of alignment
  const int64_t want = std::max<int64_t>(1, target_numel / std::max<int64_t>(cols, 1));
  return std::min(rows, std::max(step, want / step * step));
}

void ParameterStore::materialize(int64_t unit_alignment, bool with_grads, bool with_params, DType param_dtype,
                                 DType grad_dtype) {
  DS_ASSERT(!materialized());
  DS_ASSERT(unit_alignment >= 1);
  int64_t offset = 0;
  for (size_t i = 0; i < units_.size(); ++i) {
    ParamUnit& u = units_[i];
    u.offset = offset;
    u.padded_numel = (u.numel + unit_alignment - 1) / unit_alignment * unit_alignment;
    if (u.sliced) {
      if (u.row_begin == 0) u.sliced->offset = offset;
      DS_ASSERT(u.row_end == u.sliced->shape[0] || u.padded_numel == u.numel,
                "slice {} of {} elements is not a multiple of the alignment {}", u.name, u.numel, unit_alignment);
    }
    int64_t o = offset;
    for (Parameter* p : u.params) {
      p->offset = o;
      o += p->numel();
    }
    offset += u.padded_numel;
  }
  padded_numel_ = offset;
  materialized_ = true;
  if (with_params) flat_params_ = Tensor::zeros({padded_numel_}, param_dtype, Category::param);
  if (with_grads) flat_grads_ = Tensor::zeros({padded_numel_}, grad_dtype, Category::grad);
  for (Parameter& p : params_) {
    if (with_params && param_dtype == DType::f32) p.data = flat_params_.slice_flat(p.offset, p.shape);
    if (with_grads && grad_dtype == DType::f32) p.grad = flat_grads_.slice_flat(p.offset, p.shape);
  }
}

const ParamUnit* ParameterStore::unit_of(const Module* owner) const {
  for (const ParamUnit& u : units_)
    if (u.owner == owner) return &u;
  return nullptr;
}

Parameter* ParameterStore::find(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

Parameter& ParameterStore::get(const std::string& name) {
  Parameter* p = find(name);
  if (!p) {
    std::vector<std::string> names;
    for (const Parameter& q : params_) names.push_back(q.name);
    const std::vector<std::string> closest = closest_names(name, names, 3);
    DS_THROW(Error, "[model] no parameter named '{}' among the model's {} parameters{}{}. Check the name and the "
             "model configuration.", name, params_.size(), closest.empty() ? "" : "; closest: ", quoted_list(closest));
  }
  return *p;
}

void ParameterStore::zero_grad() {
  if (flat_grads_.defined()) flat_grads_.zero_();
}

}  // namespace ds::nn
