// Tensor parallelism (Megatron; DESIGN decision 8): each layer's matrices split across the ranks of a model group.
// A column-parallel linear splits its weight by output columns: its input is whole on every rank (forward: the
// identity), its output stays split, and its input gradient is the sum of every rank's part (backward: an
// all-reduce, Megatron's "f"). A row-parallel linear splits by input rows: its input is the previous layer's split
// output, its output is the all-reduced sum of the partial products (forward: "g"), and its bias is added once. So
// a transformer block all-reduces twice in forward (after attention's and the MLP's output projections) and twice
// in backward (before QKV and FC), b·s·h elements each. LayerNorms and the row-parallel biases are replicated:
// their inputs and gradients are the same on every rank, so their gradients are too, with no reduction.
// The layers come in through the LinearFactory (layers.h); the vocabulary-parallel embedding and cross-entropy
// are the model's (nn/models/gpt2.cpp). The group is an interface, so this part needs no communicator: the engine
// hands one in over its model-parallel communicator, which counts the traffic.
#pragma once

#include <cstdint>

#include "ds/nn/layers.h"

namespace ds::nn {

// The ranks one layer is split across.
class TensorParallelGroup {
 public:
  virtual ~TensorParallelGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In-place element-wise sum (or max) over the group of a host fp32 buffer.
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  virtual void all_reduce_max(float* data, int64_t n) = 0;
  void all_reduce_sum(const Tensor& t) { all_reduce_sum(t.data<float>(), t.numel()); }
};

// Weight [in, out/size] (each of `blocks` output blocks split), bias split alike; backward all-reduces dx.
class ColumnParallelLinear final : public Linear {
 public:
  ColumnParallelLinear(ParameterStore& store, const std::string& name, int in, int out, bool bias, int blocks,
                       TensorParallelGroup& group);
  Tensor backward(Ctx& ctx, const Tensor& dy) override;

 private:
  TensorParallelGroup& group_;
};

// Weight [in/size, out], bias [out] replicated; forward all-reduces the output.
class RowParallelLinear final : public Linear {
 public:
  RowParallelLinear(ParameterStore& store, const std::string& name, int in, int out, bool bias,
                    TensorParallelGroup& group);
  Tensor forward(Ctx& ctx, const Tensor& x) override;

 private:
  TensorParallelGroup& group_;
};

// Column-parallel for LinearKind::column, row-parallel for LinearKind::row, over `group` (which must outlive the
// layers it makes).
LinearFactory tensor_parallel_linear(TensorParallelGroup& group);

}  // namespace ds::nn
