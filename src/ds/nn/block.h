// A Block is one step of a model's chain as the ModuleRunner sees it: activations in, activations out, with an
// explicit backward. A model is a sequence of blocks (GPT-2: embedding, transformer blocks, head); the runner, not
// the block, calls the ZeRO hooks around each block and decides whether to checkpoint it. A block never sees the
// hooks: what it needs of a parameter that is not resident (rows of a partitioned embedding, the slices of a tied
// head) it asks of the runner through RowAccess, which knows how the parameter is held.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "ds/nn/module.h"

namespace ds::nn {

// Receives one row slice of a row-sliced parameter while it is gathered: its rows [row_begin, row_begin +
// data.size(0)) and, in backward only, the gradient rows to accumulate into (undefined in forward).
using SliceFn = std::function<void(int64_t row_begin, const Tensor& data, const Tensor& grad)>;

// What a block may ask of the runner for a row-sliced parameter (ParameterStore::add_sliced) whose data or
// gradient is not resident on this rank. See Note [Tied parameters] in module_runner.cpp.
class RowAccess {
 public:
  virtual ~RowAccess() = default;
  // out[i] = row ids[i] of p (a collective under ZeRO-3: every rank calls it with the same n).
  virtual void lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) = 0;
  // Gradient row ids[i] of p += rows[i] (a collective where p's gradient is partitioned).
  virtual void accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) = 0;
  // Visits p's row slices, each gathered for the call: in order for a forward use; in reverse order, with a
  // gradient to accumulate into, for a backward use.
  virtual void for_each_slice(const Parameter& p, bool backward, const SliceFn& fn) = 0;
};

struct MoeStats;

// One micro-batch as the blocks see it: the token ids at both ends of the chain, and what the last block returns.
struct Pass {
  const int32_t* inputs = nullptr;   // [B*T] token ids (the first block reads them)
  const int32_t* targets = nullptr;  // [B*T] target ids, -1 = ignored (the loss block reads them); null: no loss
  int B = 0, T = 0;
  float grad_scale = 1.0f;   // training: gradients are those of grad_scale * loss_sum
  // Training: the scale of loss terms that are means already (MoE's auxiliary losses): grad_scale times the
  // number of target tokens, i.e. the loss scale over the accumulation steps.
  float loss_term_scale = 1.0f;
  uint64_t noise_seed = 0;    // seeds the pass's random routing noise (MoE); the engine varies it per step
  bool recomputing = false;   // set by the runner while it recomputes a checkpointed block's forward
  MoeStats* moe = nullptr;    // where MoE layers add their routing statistics (optional)
  float* logits = nullptr;   // when set, the loss block writes full logits [B*T, V] here instead of a loss
  double loss_sum = 0;       // written by the loss block: the sum of the per-token losses
  RowAccess* rows = nullptr;  // set by the runner
  int64_t rows_count() const { return int64_t(B) * T; }
};

class Block : public Module {
 public:
  using Module::Module;
  // Forward: `x` is the previous block's output (undefined for the first block). In training (ctx.training) the
  // block saves what its backward needs in the Ctx. A loss block (is_loss()) returns an undefined tensor and, in
  // training, computes its own backward as it goes (a fused head), so its backward() only hands the result out.
  virtual Tensor forward(Ctx& ctx, const Tensor& x, Pass& pass) = 0;
  // Backward: `dy` is the gradient of this block's output (undefined for a loss block). Parameter gradients are
  // accumulated (+=); the input gradient is written into `dx` when the runner passes one (a [rows, C] buffer of
  // the Ctx's scratch arena, distinct from dy) and returned. The first block returns an undefined tensor. Every
  // temporary of the backward is released before it returns.
  virtual Tensor backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor dx) = 0;
  // The gather units the runner brackets with hooks around this block (owners of ParameterStore units). Default:
  // the block's own unit, if it owns one.
  virtual std::vector<const Module*> units() const { return {this}; }
  // Whether activation checkpointing may drop this block's saved activations and recompute them in backward.
  virtual bool checkpointable() const { return false; }
  virtual bool is_loss() const { return false; }
  // The block's class name, as a pipeline's "type:REGEX" partitioning matches it (DeepSpeed matches layer classes).
  virtual const char* type_name() const = 0;
};

}  // namespace ds::nn
