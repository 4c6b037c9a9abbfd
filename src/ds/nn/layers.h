// The GPT-2 building blocks: Linear (HF Conv1D layout [in, out]), LayerNorm, Gelu, CausalSelfAttention and Mlp.
// Each forward takes [rows, C] activations (rows = B*T) from the Ctx's activation arena and saves what its
// backward needs; each backward returns the input gradient (written) and accumulates parameter gradients.
// Backward results are allocated in the Ctx's scratch arena; the caller manages marks.
// Linear layers come from a LinearFactory, so a tensor-parallel layer (column- or row-parallel, DESIGN decision 8)
// can replace the dense one without touching the blocks that use it.
#pragma once

#include <functional>
#include <memory>

#include "ds/nn/block.h"

namespace ds::nn {

class Linear : public Module {
 public:
  Linear(ParameterStore& store, const std::string& name, int in, int out, bool bias = true);
  virtual Tensor forward(Ctx& ctx, const Tensor& x);       // x [N, in] -> [N, out]
  virtual Tensor backward(Ctx& ctx, const Tensor& dy);     // dy [N, out] -> dx [N, in]
  void collect_parameters(std::vector<Parameter*>& out) const override;
  Parameter* weight() const { return weight_; }
  Parameter* bias() const { return bias_; }
  int in_features() const { return in_; }
  int out_features() const { return out_; }

 private:
  int in_, out_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
};

// How a tensor-parallel layer splits a linear layer (Megatron, tensor_parallel.h): by output columns (its output
// stays split, the next layer is row-parallel) or by input rows (its partial outputs are summed). `out_blocks`:
// the output is that many equal blocks (the fused QKV: 3), and a column split takes its share of each.
enum class LinearKind : uint8_t { column, row };
using LinearFactory = std::function<std::unique_ptr<Linear>(ParameterStore& store, const std::string& name, int in,
                                                            int out, bool bias, LinearKind kind, int out_blocks)>;
// The dense (unsplit) layer, whatever the kind.
const LinearFactory& dense_linear();

class LayerNorm : public Module {
 public:
  LayerNorm(ParameterStore& store, const std::string& name, int C);
  Tensor forward(Ctx& ctx, const Tensor& x);
  Tensor backward(Ctx& ctx, const Tensor& dy);
  void collect_parameters(std::vector<Parameter*>& out) const override;

 private:
  int C_;
  Parameter* weight_;
  Parameter* bias_;
};

class CausalSelfAttention : public Module {
 public:
  // With a column-parallel c_attn, the heads are split too: this rank attends with the heads of its columns.
  CausalSelfAttention(ParameterStore& store, const std::string& name, int C, int n_head,
                      const LinearFactory& linear = dense_linear());
  // x [B*T, C]; B and T are needed to split rows into sequences.
  Tensor forward(Ctx& ctx, const Tensor& x, int B, int T);
  Tensor backward(Ctx& ctx, const Tensor& dy, int B, int T);
  void collect_parameters(std::vector<Parameter*>& out) const override;

 private:
  int C_, NH_;  // this rank's width and heads (C / tp, n_head / tp under tensor parallelism)
  std::unique_ptr<Linear> c_attn_;  // column-parallel
  std::unique_ptr<Linear> c_proj_;  // row-parallel
};

class Mlp : public Module {
 public:
  Mlp(ParameterStore& store, const std::string& name, int C, const LinearFactory& linear = dense_linear());
  Tensor forward(Ctx& ctx, const Tensor& x);
  Tensor backward(Ctx& ctx, const Tensor& dy);
  void collect_parameters(std::vector<Parameter*>& out) const override;

 private:
  std::unique_ptr<Linear> c_fc_;    // column-parallel
  std::unique_ptr<Linear> c_proj_;  // row-parallel
};

class MoeLayer;
struct MoeBlockArgs;  // moe.h

// Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)). One gather unit; checkpointable. With `moe`, an
// MoE layer (moe.h) takes the MLP's place, and its experts are a second unit.
class TransformerBlock : public Block {
 public:
  TransformerBlock(ParameterStore& store, const std::string& name, int C, int n_head,
                   const LinearFactory& linear = dense_linear(), const MoeBlockArgs* moe = nullptr);
  ~TransformerBlock() override;
  Tensor forward(Ctx& ctx, const Tensor& x, Pass& pass) override;
  // Writes the input gradient into `dx` (allocated by the caller, distinct from dy) and returns it; every
  // temporary of the block's backward is released before returning, so callers can ping-pong two buffers.
  Tensor backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor dx) override;
  std::vector<const Module*> units() const override;
  bool checkpointable() const override { return true; }
  const char* type_name() const override { return "TransformerBlock"; }
  void collect_parameters(std::vector<Parameter*>& out) const override;
  const MoeLayer* moe() const { return moe_.get(); }

 private:
  LayerNorm ln_1_;
  CausalSelfAttention attn_;
  LayerNorm ln_2_;
  std::unique_ptr<Mlp> mlp_;       // a dense block's
  std::unique_ptr<MoeLayer> moe_;  // an MoE block's
};

}  // namespace ds::nn
