// The module runner: hook calls, tied parameters, sub-range forward/backward and activation checkpointing.
#include "ds/nn/module_runner.h"

#include <algorithm>
#include <chrono>

namespace ds::nn {

ModuleRunner::ModuleRunner(ParameterStore& store, std::vector<Block*> blocks)
    : store_(store), blocks_(std::move(blocks)) {
  DS_ASSERT(!blocks_.empty(), "a model needs at least one block");
}

// Note [Tied parameters]
// A parameter used by more than one block (GPT-2's wte: the embedding reads rows of it, the head multiplies by all
// of it) is declared with tie(). Where its data and gradient are resident on this rank (no ZeRO, stages 0-1 in
// fp32), the blocks use it whole, and the runner brackets its slice units with hooks as one span of backward: their
// pre_backward before the backward of the last user in forward order (the head), their post_backward after that of
// the first user (the embedding), where the gradient is complete. Where it is not resident (stage 2's partitioned
// gradients, stage 3's partitioned data, 16-bit storage), the blocks reach it through RowAccess: for_each_slice
// gathers one slice at a time, and row lookups and row-gradient updates go to the hooks' row collectives. Either
// way the gradient is reported ready once, after its last use.
void ModuleRunner::tie(const Parameter& p, std::vector<size_t> users) {
  DS_ASSERT(users.size() >= 2, "{}: a tie needs at least two users", p.name);
  for (size_t u : users) DS_ASSERT(u < blocks_.size(), "{}: tied user {} is not a block", p.name, u);
  Tie t{&p, *std::min_element(users.begin(), users.end()), *std::max_element(users.begin(), users.end()), {}};
  for (const ParamUnit& unit : store_.units())
    if (unit.sliced == &p) t.slices.push_back(unit.owner);
  DS_ASSERT(!t.slices.empty(), "{}: only row-sliced parameters (ParameterStore::add_sliced) can be tied", p.name);
  ties_.push_back(std::move(t));
}

namespace {
bool resident(const Parameter& p) { return p.data.defined() && p.grad.defined(); }
}  // namespace

void ModuleRunner::pre_forward(const Block& b) {
  if (!hooks_) return;
  for (const Module* u : b.units()) hooks_->pre_forward(*u);
}

void ModuleRunner::post_forward(const Block& b) {
  if (!hooks_) return;
  for (const Module* u : b.units()) hooks_->post_forward(*u);
}

void ModuleRunner::pre_backward(size_t i) {
  if (!hooks_) return;
  for (const Tie& t : ties_)
    if (t.last_user == i && resident(*t.param))
      for (const Module* s : t.slices) hooks_->pre_backward(*s);
  for (const Module* u : blocks_[i]->units()) hooks_->pre_backward(*u);
}

void ModuleRunner::post_backward(size_t i) {
  if (!hooks_) return;
  for (const Module* u : blocks_[i]->units()) hooks_->post_backward(*u);
  for (const Tie& t : ties_)
    if (t.first_user == i && resident(*t.param))
      for (const Module* s : t.slices) hooks_->post_backward(*s);
}

// Note [Checkpointed forward]
// In training, a checkpointed block runs its forward with saving off and its activations in the scratch arena,
// which is released at once; only its input (kept under the block's key) and a copy of its output stay. In
// backward the runner calls the block's pre_backward hooks (which gather the parameters, as for any backward),
// runs the forward again with saving on into the activation arena, runs the backward, then drops what the
// recomputation saved and releases the activation arena back to where it was, so one block's activations exist at
// a time. The recomputation runs the same kernels on the same inputs and
// parameters as the first forward, so the gradients are bit-identical to a run without checkpointing.
Tensor ModuleRunner::forward(Ctx& ctx, Pass& pass, size_t first, size_t last, Tensor x) {
  DS_ASSERT(first < last && last <= blocks_.size(), "forward over blocks [{}, {}) of {}", first, last,
            blocks_.size());
  pass.rows = this;
  for (size_t i = first; i < last; ++i) {
    Block& b = *blocks_[i];
    pre_forward(b);
    if (ctx.training && checkpointed(i)) {
      ctx.saved(&b) = {x};
      const size_t mark = ctx.scratch().mark();
      ctx.training = false;
      ctx.set_act_in_scratch(true);
      Tensor y = b.forward(ctx, x, pass);
      ctx.set_act_in_scratch(false);
      ctx.training = true;
      x = ctx.act().alloc(y.shape(), y.dtype());
      x.copy_from(y);
      ctx.scratch().release(mark);
    } else {
      x = b.forward(ctx, x, pass);
    }
    post_forward(b);
  }
  return x;
}

Tensor ModuleRunner::backward(Ctx& ctx, Pass& pass, size_t first, size_t last, Tensor dy) {
  DS_ASSERT(first < last && last <= blocks_.size(), "backward over blocks [{}, {}) of {}", first, last,
            blocks_.size());
  DS_ASSERT(ctx.training, "backward after a forward that did not save activations");
  pass.rows = this;
  // The blocks' input gradients alternate between two buffers shaped like the first one that is needed.
  Tensor buffers[2];
  for (size_t i = last; i-- > first;) {
    Block& b = *blocks_[i];
    Tensor dx;
    if (!b.is_loss() && dy.defined()) {
      if (!buffers[0].defined()) {
        buffers[0] = ctx.scratch().alloc(dy.shape(), dy.dtype());
        buffers[1] = ctx.scratch().alloc(dy.shape(), dy.dtype());
      }
      dx = buffers[0].raw() == dy.raw() ? buffers[1] : buffers[0];
    }
    pre_backward(i);
    if (checkpointed(i)) {
      const auto start = std::chrono::steady_clock::now();
      const Tensor input = ctx.saved(&b).at(0);
      const size_t mark = ctx.act().mark();
      const size_t saved_mark = ctx.saved_mark();
      pass.recomputing = true;
      b.forward(ctx, input, pass);
      pass.recomputing = false;
      recompute_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const bool split = ctx.defer_weight_grads;  // the recomputed activations go now: no split here
      ctx.defer_weight_grads = false;
      dy = b.backward(ctx, dy, pass, dx);
      ctx.defer_weight_grads = split;
      ctx.drop_saved(saved_mark);  // the recomputed activations' last holders
      ctx.act().release(mark);
    } else if (ctx.defer_weight_grads) {
      ctx.deferred().push_back({i, {}});
      dy = b.backward(ctx, dy, pass, dx);
      if (ctx.deferred().back().work.empty()) ctx.deferred().pop_back();
    } else {
      dy = b.backward(ctx, dy, pass, dx);
    }
    post_backward(i);
  }
  return dy;
}

// Note [Split backward]
// A zero-bubble schedule (pipe/schedule.h) runs a block's backward as two passes: B, the input gradients, which the
// previous stage waits for, and W, the weight gradients, which nobody waits for and which fill the pipeline's
// bubbles. In B (ctx.defer_weight_grads) the layers compute dx and queue their dW and db work with the inputs it
// needs (the saved activation and a copy of the output gradient); W runs that work. Each pass is bracketed by the
// block's backward hooks: ZeRO fetches the parameters for B's dx, and binds and commits gradient memory around W's
// dW (the B pass commits nothing but zeros). The arithmetic is the same as the unsplit backward's, done in the same
// order per parameter, so the gradients are bit-identical. A checkpointed block is not split: its recomputed
// activations are released as soon as its backward is done.
void ModuleRunner::backward_weights(Ctx& ctx) {
  for (Ctx::DeferredBlock& d : ctx.deferred()) {
    pre_backward(d.block);
    for (auto& work : d.work) work();
    post_backward(d.block);
  }
  ctx.deferred().clear();
}

void ModuleRunner::train(Ctx& ctx, Pass& pass) {
  ctx.training = true;
  forward(ctx, pass, 0, blocks_.size(), Tensor());
  backward(ctx, pass, 0, blocks_.size(), Tensor());
}

void ModuleRunner::evaluate(Ctx& ctx, Pass& pass) {
  ctx.training = false;
  forward(ctx, pass, 0, blocks_.size(), Tensor());
}

double ModuleRunner::take_recompute_seconds() {
  const double s = recompute_seconds_;
  recompute_seconds_ = 0;
  return s;
}

void ModuleRunner::lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out) {
  DS_ASSERT(hooks_, "{} is not resident but no hooks are set", p.name);
  hooks_->lookup_rows(p, ids, n, out);
}

void ModuleRunner::accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n) {
  DS_ASSERT(hooks_, "{}'s gradient is not resident but no hooks are set", p.name);
  hooks_->accumulate_row_grads(p, ids, rows, n);
}

void ModuleRunner::for_each_slice(const Parameter& p, bool backward, const SliceFn& fn) {
  const int64_t cols = p.shape[1];
  std::vector<const ParamUnit*> slices;
  for (const ParamUnit& unit : store_.units())
    if (unit.sliced == &p) slices.push_back(&unit);
  DS_ASSERT(!slices.empty(), "{} is not row-sliced", p.name);
  if (backward) std::reverse(slices.begin(), slices.end());
  for (const ParamUnit* s : slices) {
    const Module& owner = *s->owner;
    if (hooks_) backward ? hooks_->pre_backward(owner) : hooks_->pre_forward(owner);
    DS_ASSERT(p.data.defined() || hooks_, "{} is not resident but no hooks are set", p.name);
    const Shape shape{s->row_end - s->row_begin, cols};
    const Tensor data = p.data.defined() ? p.data.slice_flat(s->row_begin * cols, shape)
                                         : Tensor::borrow(const_cast<float*>(hooks_->slice_data(owner)), shape,
                                                          DType::f32);
    Tensor grad;
    if (backward)
      grad = hooks_ ? Tensor::borrow(hooks_->slice_grads(owner), shape, DType::f32)
                    : p.grad.slice_flat(s->row_begin * cols, shape);
    fn(s->row_begin, data, grad);
    if (hooks_) backward ? hooks_->post_backward(owner) : hooks_->post_forward(owner);
  }
}

}  // namespace ds::nn
