// Flat parameter/gradient buffers and name lookup.
#include "ds/nn/parameter.h"

#include <cstring>

namespace ds {

Parameter* ParameterStore::add(const std::string& name, const Shape& shape) {
  DS_ASSERT(!materialized(), "parameter {} declared after materialize()", name);
  DS_ASSERT(find(name) == nullptr, "parameter {} declared twice", name);
  Parameter& p = params_.emplace_back();
  p.name = name;
  p.shape = shape;
  p.offset = numel_;
  numel_ += shape.numel();
  return &p;
}

void ParameterStore::materialize() {
  DS_ASSERT(!materialized());
  flat_params_ = Tensor::zeros({numel_}, DType::f32, Category::param);
  flat_grads_ = Tensor::zeros({numel_}, DType::f32, Category::grad);
  for (Parameter& p : params_) {
    p.data = flat_params_.slice_flat(p.offset, p.shape);
    p.grad = flat_grads_.slice_flat(p.offset, p.shape);
  }
}

Parameter* ParameterStore::find(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

Parameter& ParameterStore::get(const std::string& name) {
  Parameter* p = find(name);
  if (!p) {
    std::string known;
    for (size_t i = 0; i < params_.size() && i < 6; ++i) known += (i ? ", " : "") + params_[i].name;
    DS_THROW(Error, "[model] no parameter named '{}'; the model has {} parameters ({}, ...)", name, params_.size(),
             known);
  }
  return *p;
}

void ParameterStore::zero_grad() {
  if (flat_grads_.defined()) flat_grads_.zero_();
}

}  // namespace ds
