// Parameters live in one flat fp32 buffer carved by a size table (llm.c), with a matching flat gradient buffer:
// exactly the layout ZeRO stages 1-2 partition. Modules declare parameters (name, shape) while the model is
// built; materialize() then allocates both buffers once and points every Parameter at its slice, in
// declaration (DFS) order.
#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "ds/core/tensor.h"
#include "ds/core/tp_split.h"

namespace ds::nn {

struct Parameter {
  std::string name;      // Hugging Face name, e.g. "transformer.h.0.attn.c_attn.weight"
  Shape shape;           // this rank's shape (the whole parameter's unless tp.split())
  TpSplit tp;
  int64_t offset = 0;    // element offset into the flat buffers
  Tensor data;           // view into the flat parameter buffer
  Tensor grad;           // view into the flat gradient buffer

  int64_t numel() const { return shape.numel(); }
  const Shape& full_shape() const { return tp.split() ? tp.full : shape; }
};

class Module;

// A gather unit: parameters that ZeRO gathers, releases and reduces together (a transformer block, the
// position embedding, the final norm), or a slice of rows of one large parameter (the token embedding, whose
// slices are gathered one at a time by the tied head). Units are contiguous in the flat buffers; each starts and
// ends on a multiple of the alignment given to materialize(), so a unit splits into equal per-rank chunks with no
// parameter-level logic. The slices of a parameter are consecutive and only the last one is padded, so the
// parameter stays contiguous.
struct ParamUnit {
  const Module* owner = nullptr;
  std::string name;
  int64_t offset = 0;         // first element in the flat buffers
  int64_t numel = 0;          // elements of its parameters (or of its rows)
  int64_t padded_numel = 0;   // numel rounded up to the alignment (padding elements stay zero)
  std::vector<Parameter*> params;  // the parameters wholly inside the unit (none for a slice)
  Parameter* sliced = nullptr;     // a slice: the parameter, and its rows [row_begin, row_end)
  int64_t row_begin = 0, row_end = 0;
};

class ParameterStore {
 public:
  // Starts a new gather unit; parameters added afterwards belong to it. Parameters added before any unit was
  // started form an unnamed unit of their own.
  size_t begin_unit(const std::string& name, const Module* owner = nullptr);
  // For units whose module is constructed after its parameters were declared.
  void set_unit_owner(size_t unit, const Module* owner) { units_.at(unit).owner = owner; }
  // Declares a parameter; the returned pointer stays valid for the store's life.
  Parameter* add(const std::string& name, const Shape& shape);
  // Declares a 2-D parameter split by rows into units of `rows_per_unit` rows (the last may be shorter), named
  // "<name>[a:b]". Each slice but the last must hold a multiple of the alignment materialize() will get
  // (slice_rows() picks such a count). Start a new unit before adding further parameters.
  Parameter* add_sliced(const std::string& name, const Shape& shape, int64_t rows_per_unit);
  // Rows per slice for a [rows, cols] parameter: about target_numel elements, a multiple of `alignment`.
  static int64_t slice_rows(int64_t rows, int64_t cols, int64_t target_numel, int64_t alignment);
  // Lays out the units (each padded to a multiple of `unit_alignment` elements; ZeRO passes a multiple of the
  // data-parallel size), allocates the flat parameter and gradient buffers (zeroed) and binds every parameter to
  // its slice. Without gradients (ZeRO-2/3 keep no full gradient buffer) Parameter::grad stays undefined until
  // bound; without parameters (ZeRO-3) Parameter::data too: each rank then holds only its partition, and
  // Parameter::data is bound per unit while gathered. Buffers in a 16-bit dtype (mixed precision) are not bound
  // either: the model computes in fp32 from copies ZeRO makes per unit.
  void materialize(int64_t unit_alignment = 1, bool with_grads = true, bool with_params = true,
                   DType param_dtype = DType::f32, DType grad_dtype = DType::f32);
  const std::vector<ParamUnit>& units() const { return units_; }
  const ParamUnit* unit_of(const Module* owner) const;
  // Elements in the flat buffers, padding included (numel() excludes it).
  int64_t padded_numel() const { return padded_numel_; }

  bool materialized() const { return materialized_; }
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
  std::vector<ParamUnit> units_;
  bool after_slices_ = false;  // the last unit is a slice: add() needs a new unit first
  int64_t numel_ = 0;
  int64_t padded_numel_ = 0;
  bool materialized_ = false;
  Tensor flat_params_;
  Tensor flat_grads_;
};

}  // namespace ds::nn
