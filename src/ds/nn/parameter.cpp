// Flat parameter/gradient buffers and name lookup.
#include "ds/nn/parameter.h"

#include <cstring>

#include "ds/core/strings.h"

namespace ds {

size_t ParameterStore::begin_unit(const std::string& name, const Module* owner) {
  DS_ASSERT(!materialized(), "unit {} started after materialize()", name);
  units_.push_back(ParamUnit{owner, name, 0, 0, 0, {}});
  return units_.size() - 1;
}

Parameter* ParameterStore::add(const std::string& name, const Shape& shape) {
  DS_ASSERT(!materialized(), "parameter {} declared after materialize()", name);
  DS_ASSERT(find(name) == nullptr, "parameter {} declared twice", name);
  if (units_.empty()) begin_unit("");
  Parameter& p = params_.emplace_back();
  p.name = name;
  p.shape = shape;
  numel_ += shape.numel();
  units_.back().params.push_back(&p);
  units_.back().numel += shape.numel();
  return &p;
}

void ParameterStore::materialize(int64_t unit_alignment, bool with_grads, Category param_category) {
  DS_ASSERT(!materialized());
  DS_ASSERT(unit_alignment >= 1);
  int64_t offset = 0;
  for (ParamUnit& u : units_) {
    u.offset = offset;
    u.padded_numel = (u.numel + unit_alignment - 1) / unit_alignment * unit_alignment;
    int64_t o = offset;
    for (Parameter* p : u.params) {
      p->offset = o;
      o += p->numel();
    }
    offset += u.padded_numel;
  }
  padded_numel_ = offset;
  materialized_ = true;
  flat_params_ = Tensor::zeros({padded_numel_}, DType::f32, param_category);
  if (with_grads) flat_grads_ = Tensor::zeros({padded_numel_}, DType::f32, Category::grad);
  for (Parameter& p : params_) {
    p.data = flat_params_.slice_flat(p.offset, p.shape);
    if (with_grads) p.grad = flat_grads_.slice_flat(p.offset, p.shape);
  }
}

void ParameterStore::release_flat_params() {
  flat_params_ = Tensor();
  for (Parameter& p : params_) p.data = Tensor();
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

}  // namespace ds
