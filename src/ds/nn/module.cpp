// Arena and Ctx, and the default ModuleHooks. Chunks are only added while a pass grows past the previous high-water
// mark; reset() then folds them into one chunk, so steady-state passes allocate nothing.
#include "ds/nn/module.h"

#include <algorithm>

namespace ds::nn {
namespace {
constexpr int64_t kAlign = 64;
constexpr int64_t kMinChunk = int64_t(16) << 20;
int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  const int64_t bytes = align_up(std::max<int64_t>(shape.numel() * static_cast<int64_t>(dtype_size(dtype)), 1));
  if (chunks_.empty() || chunks_.back().used + bytes > chunks_.back().storage->bytes()) {
    const int64_t want = std::max<int64_t>({bytes, kMinChunk, static_cast<int64_t>(high_water_) - capacity()});
    chunks_.push_back({allocate_storage(want, category_), 0});
  }
  Chunk& c = chunks_.back();
  Tensor t = Tensor::from_storage(c.storage, c.used, shape, dtype);
  c.used += bytes;
  used_total_ += static_cast<size_t>(bytes);
  high_water_ = std::max(high_water_, used_total_);
  return t;
}

void Arena::release(size_t mark) {
  DS_ASSERT(mark <= used_total_, "arena release to {} beyond the {} bytes in use", mark, used_total_);
  // used_total_ counts exactly the bytes handed out from each chunk (a chunk's unused tail is never counted), so
  // walking back from the newest chunk frees exactly used_total_ - mark bytes, dropping chunks that empty.
  size_t to_free = used_total_ - mark;
  while (to_free > 0) {
    DS_ASSERT(!chunks_.empty(), "arena bookkeeping lost {} bytes", to_free);
    Chunk& c = chunks_.back();
    const int64_t n = std::min<int64_t>(c.used, static_cast<int64_t>(to_free));
    c.used -= n;
    to_free -= static_cast<size_t>(n);
    if (c.used == 0 && chunks_.size() > 1) {
      chunks_.pop_back();  // later allocations continue in the previous chunk, right after the mark
    } else {
      DS_ASSERT(to_free == 0, "arena bookkeeping lost {} bytes", to_free);
    }
  }
  used_total_ = mark;
}

void Arena::reset() {
  if (chunks_.size() > 1) {
    chunks_.clear();  // tensors still holding a chunk keep it alive; we just stop handing it out
    chunks_.push_back({allocate_storage(static_cast<int64_t>(high_water_), category_), 0});
  } else if (!chunks_.empty()) {
    chunks_.back().used = 0;
  }
  used_total_ = 0;
}

int64_t Arena::capacity() const {
  int64_t total = 0;
  for (const Chunk& c : chunks_) total += c.storage->bytes();
  return total;
}

const float* ModuleHooks::slice_data(const Module& slice) {
  DS_ASSERT(false, "{}: these hooks keep every parameter resident", slice.name());
  return nullptr;
}

float* ModuleHooks::slice_grads(const Module& slice) {
  DS_ASSERT(false, "{}: these hooks keep every gradient resident", slice.name());
  return nullptr;
}

void ModuleHooks::lookup_rows(const Parameter& p, const int32_t*, int64_t, float*) {
  DS_ASSERT(false, "{}: these hooks keep every parameter resident", p.name);
}

void ModuleHooks::accumulate_row_grads(const Parameter& p, const int32_t*, const float*, int64_t) {
  DS_ASSERT(false, "{}: these hooks keep every gradient resident", p.name);
}

void Ctx::drop_saved(size_t mark) {
  DS_ASSERT(mark <= saved_order_.size(), "saved mark {} beyond {} entries", mark, saved_order_.size());
  for (size_t i = mark; i < saved_order_.size(); ++i) saved_.erase(saved_order_[i]);
  saved_order_.resize(mark);
}

void Ctx::defer(std::function<void()> work) {
  DS_ASSERT(defer_weight_grads && !deferred_.empty(), "weight-gradient work deferred outside a split backward");
  deferred_.back().work.push_back(std::move(work));
}

void Ctx::reset() {
  DS_ASSERT(deferred_.empty(), "a micro-batch was reset with {} block(s) of weight gradients not yet computed",
            deferred_.size());
  saved_.clear();
  saved_order_.clear();
  stash_.clear();
  act_.reset();
  scratch_.reset();
}

}  // namespace ds::nn
