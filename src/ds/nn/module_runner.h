// ModuleRunner drives a model given as a sequence of Blocks (DESIGN decision 5): forward and backward over the
// whole chain or over any contiguous sub-range of it (a future pipeline stage: activations in, activation
// gradients out), with the ModuleHooks (ZeRO's gather, prefetch, release, reduce) called here and only here, in
// pairs around each block's gather units. Tied parameters are declared, not special-cased: a row-sliced parameter
// used by several blocks (GPT-2's wte in the embedding and the head) reports its gradient ready only after its last
// use in backward. Activation checkpointing is the runner's too: a checkpointed block keeps only its input, and its
// forward runs again in backward, between the same hooks, so gradients are bit-identical to a run without it.
#pragma once

#include <cstdint>
#include <vector>

#include "ds/nn/block.h"

namespace ds::nn {

class ModuleRunner final : public RowAccess {
 public:
  // `blocks` are not owned and stay in this order; `store` holds their parameters (its units' owners are the
  // blocks' units(), or the slice owners of row-sliced parameters).
  ModuleRunner(ParameterStore& store, std::vector<Block*> blocks);

  // Declares that blocks `users` (indices into the chain) all use the row-sliced parameter `p`.
  void tie(const Parameter& p, std::vector<size_t> users);
  void set_hooks(ModuleHooks* hooks) { hooks_ = hooks; }
  // Activation checkpointing of every checkpointable block (Block::checkpointable()).
  void set_checkpointing(bool on) { checkpointing_ = on; }
  bool checkpointing() const { return checkpointing_; }
  size_t size() const { return blocks_.size(); }

  // Blocks [first, last) forward: x is block `first`'s input (undefined when it is the first block of the model);
  // returns block last-1's output (undefined when it is the loss block). ctx.training selects saving for backward.
  Tensor forward(Ctx& ctx, Pass& pass, size_t first, size_t last, Tensor x);
  // Blocks [first, last) backward, after their forward on the same ctx: dy is the gradient of block last-1's
  // output (undefined when it is the loss block); returns the gradient of block `first`'s input (undefined for the
  // model's first block), in the ctx's scratch arena.
  Tensor backward(Ctx& ctx, Pass& pass, size_t first, size_t last, Tensor dy);
  // The weight gradients a split backward (ctx.defer_weight_grads, Note [Split backward]) left in the ctx, block by
  // block between the block's backward hooks; afterwards the ctx holds none.
  void backward_weights(Ctx& ctx);
  // One training micro-batch over the whole chain (forward, then backward), or one forward without saving.
  void train(Ctx& ctx, Pass& pass);
  void evaluate(Ctx& ctx, Pass& pass);

  // Seconds spent recomputing checkpointed forwards since the last call (activation_checkpointing.profile).
  double take_recompute_seconds();

  // RowAccess, for the blocks (through Pass::rows).
  void lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) override;
  void accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) override;
  void for_each_slice(const Parameter& p, bool backward, const SliceFn& fn) override;

 private:
  struct Tie {
    const Parameter* param;
    size_t first_user, last_user;
    std::vector<const Module*> slices;  // owners of the parameter's row-slice units, in row order
  };
  bool checkpointed(size_t i) const { return checkpointing_ && blocks_[i]->checkpointable(); }
  void pre_forward(const Block& b);
  void post_forward(const Block& b);
  void pre_backward(size_t i);
  void post_backward(size_t i);

  ParameterStore& store_;
  std::vector<Block*> blocks_;
  std::vector<Tie> ties_;
  ModuleHooks* hooks_ = nullptr;
  bool checkpointing_ = false;
  double recompute_seconds_ = 0;
};

}  // namespace ds::nn
