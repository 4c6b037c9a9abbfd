// Parameters live in one flat fp32 buffer carved by a size table (llm.c), with a matching flat gradient buffer:
// exactly the layout ZeRO stages 1-2 partition. Modules declare parameters (name, shape) while the model is
// built; materialize() then allocates both buffers once and points every Parameter at its slice, in
// declaration (DFS) order.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "ds/core/tensor.h"

namespace ds {

// ZeRO-3 state of a parameter's full data (see DESIGN decision 6).
enum class ZeroState : uint8_t { available, partitioned, inflight };

struct Parameter {
  std::string name;      // Hugging Face name, e.g. "transformer.h.0.attn.c_attn.weight"
  Shape shape;
  int64_t offset = 0;    // element offset into the flat buffers
  Tensor data;           // view into the flat parameter buffer
  Tensor grad;           // view into the flat gradient buffer
  // Tensor-parallel split: the dimension this parameter is split on, or -1 when replicated.
  int tp_split_dim = -1;
  ZeroState zero_state = ZeroState::available;

  int64_t numel() const { return shape.numel(); }
};

class ParameterStore {
 public:
  // Declares a parameter; the returned pointer stays valid for the store's life.
  Parameter* add(const std::string& name, const Shape& shape);
  // Allocates the flat parameter and gradient buffers (zeroed) and binds every parameter to its slice.
  void materialize();

  bool materialized() const { return flat_params_.defined(); }
  int64_t numel() const { return numel_; }
  const std::deque<Parameter>& all() const { return params_; }
  std::deque<Parameter>& all() { return params_; }
  Parameter* find(const std::string& name);
  Parameter& get(const std::string& name);  // throws ds::Error listing close names when missing

  Tensor& flat_params() { return flat_params_; }
  Tensor& flat_grads() { return flat_grads_; }
  void zero_grad();

 private:
  std::deque<Parameter> params_;
  int64_t numel_ = 0;
  Tensor flat_params_;
  Tensor flat_grads_;
};

}  // namespace ds
