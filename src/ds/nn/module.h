// Modules with explicit backward (DESIGN decision 5). A Ctx is one micro-batch's activation stash: forward
// saves what backward needs under the module's key, in an arena that is reused from step to step (page faults
// are expensive here, so activation memory is allocated once and recycled). Backward temporaries come from a
// second, stack-like arena: a module takes a mark, allocates, and releases back to the mark when done.
// ModuleHooks are called by the ModuleRunner (module_runner.h) around each gather unit: ZeRO gathers, releases
// and reduces there.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ds/core/tensor.h"
#include "ds/nn/parameter.h"

namespace ds::nn {

class Module;

// Bump allocator over one or more memory chunks. After a pass that needed several chunks, reset() replaces
// them with a single chunk of the high-water size, so steady-state steps never allocate.
class Arena {
 public:
  explicit Arena(Category cat) : category_(cat) {}
  Tensor alloc(const Shape& shape, DType dtype = DType::f32);
  size_t mark() const { return used_total_; }
  // Releases everything allocated after `mark` (also when chunks were added after the mark).
  void release(size_t mark);
  void reset();
  int64_t capacity() const;
  // The most bytes in use at once since the arena was made.
  size_t high_water() const { return high_water_; }

 private:
  struct Chunk {
    std::shared_ptr<Storage> storage;
    int64_t used = 0;
  };
  Category category_;
  std::vector<Chunk> chunks_;
  size_t used_total_ = 0;   // bytes handed out since reset, including alignment
  size_t high_water_ = 0;
};

class Ctx {
 public:
  Ctx() : act_(Category::activation), scratch_(Category::workspace) {}
  // Where activations go: the activation arena, or the scratch arena while a checkpointed block's first forward
  // runs (Note [Checkpointed forward] in module_runner.cpp).
  Arena& act() { return act_in_scratch_ ? scratch_ : act_; }
  void set_act_in_scratch(bool on) { act_in_scratch_ = on; }
  Arena& scratch() { return scratch_; }
  std::vector<Tensor>& saved(const Module* m) {
    auto [it, inserted] = saved_.try_emplace(m);
    if (inserted) saved_order_.push_back(m);
    return it->second;
  }
  // Entries made after a mark can be dropped together, releasing what they hold: a checkpointed block's
  // recomputed activations once its backward is done.
  size_t saved_mark() const { return saved_order_.size(); }
  void drop_saved(size_t mark);
  // State a module keeps for its backward that is not tensors (MoE routing), under its key: made on first use,
  // kept until reset(). Tensors it holds must come from the arenas like any saved tensor.
  template <class T>
  T& stash(const Module* m) {
    std::shared_ptr<void>& p = stash_[m];
    if (!p) p = std::make_shared<T>();
    return *static_cast<T*>(p.get());
  }
  // Called at the start of each micro-batch: forgets the stash and recycles both arenas.
  void reset();
  bool training = true;

  // Zero-bubble pipeline schedules split a block's backward in two (Note [Split backward] in module_runner.cpp):
  // while defer_weight_grads is on, layers compute their input gradients at once and hand the work of their weight
  // gradients to defer(), which the runner runs later, block by block, between the block's hooks. What that work
  // needs must outlive the block's backward: it lives in the activation arena (act()).
  bool defer_weight_grads = false;
  void defer(std::function<void()> work);
  struct DeferredBlock {
    size_t block;  // the runner's index
    std::vector<std::function<void()>> work;
  };
  std::vector<DeferredBlock>& deferred() { return deferred_; }

 private:
  Arena act_;
  Arena scratch_;
  bool act_in_scratch_ = false;
  std::unordered_map<const Module*, std::vector<Tensor>> saved_;
  std::vector<const Module*> saved_order_;  // keys of saved_ in the order they were made
  std::unordered_map<const Module*, std::shared_ptr<void>> stash_;
  std::vector<DeferredBlock> deferred_;
};

class ModuleHooks {
 public:
  virtual ~ModuleHooks() = default;
  virtual void pre_forward(const Module&) {}
  virtual void post_forward(const Module&) {}
  virtual void pre_backward(const Module&) {}
  virtual void post_backward(const Module&) {}
  // For a parameter sliced into units (ParameterStore::add_sliced) whose Parameter::data or ::grad is not bound
  // (ZeRO-3, ZeRO-2): the rows of the slice unit owned by `slice` while it is gathered (between its pre_ and
  // post_ hooks), and where its gradients go between pre_backward and post_backward.
  virtual const float* slice_data(const Module& slice);
  virtual float* slice_grads(const Module& slice);
  // Collectives (every rank calls them with the same n) for a row-sliced [rows, C] parameter: out[i] = row
  // ids[i] when its data is partitioned, and gradient row ids[i] += rows[i] when its gradient is.
  virtual void lookup_rows(const Parameter& p, const int32_t* ids, int64_t n, float* out);
  virtual void accumulate_row_grads(const Parameter& p, const int32_t* ids, const float* rows, int64_t n);
};

class Module {
 public:
  explicit Module(std::string name) : name_(std::move(name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& name() const { return name_; }
  // Parameters owned directly or by children, in declaration order.
  virtual void collect_parameters(std::vector<Parameter*>& out) const = 0;

 private:
  std::string name_;
};

}  // namespace ds::nn
