// Partitioned gradients (stages 2-3, see gradient_reducer.h and Note [Gradient buckets] there): each unit's
// gradient is reduce-scattered out of a bucket after its backward and added into the owned partition. A bucket is
// filled by reserve(), reduced segment by segment by issue(), and reused after recycle() has completed its
// segments. Units are bound one or a few at a time (a block's units); a bucket is never recycled while a unit
// bound into it has not been committed.
#include <algorithm>
#include <cstring>
#include <deque>
#include <utility>

#include "ds/comm/fold.h"
#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/zero/gradient_reducer.h"
#include "ds/zero/quantized_comm.h"

namespace ds::zero {
namespace {

class PartitionedGradientReducer final : public GradientReducer {
 public:
  PartitionedGradientReducer(const PartitionLayout& layout, comm::Communicator& comm, RowExchange& rows,
                             const Options& options)
      : GradientReducer(layout, comm, rows, options),
        direct_(options.grads == DType::f32),
        bound_(layout.size()) {
    DS_ASSERT(options.lands && !layout.replicated(), "partitioned gradients land in buckets of a partitioned layout");
    part_grads_ = Tensor::zeros({layout.partition_numel()}, options.grads, Category::grad, options.partition_tier);
    const int count = options.overlap && bucket_numel_ < layout.padded_numel() ? 2 : 1;
    buckets_ = Tensor::zeros({count * bucket_numel_}, options.grads, Category::comm_buffer);
    state_.resize(static_cast<size_t>(count));
  }
  ~PartitionedGradientReducer() override {
    for (Bucket& b : state_)
      for (Segment& s : b.segments) wait_quietly(s.work);
  }

  int bucket_count() const override { return static_cast<int>(state_.size()); }

  void begin_batch() override {
    drain();
    part_grads_.zero_();
  }

  void end_micro_batch(bool) override { drain(); }

  void bind(size_t unit) override {
    const int64_t n = layout_[unit].padded;
    Binding& bd = bound_[unit];
    DS_ASSERT(!bd.view.defined(), "{} is bound twice", layout_[unit].unit->name);
    if (direct_ && n <= bucket_numel_) {  // the model writes the gradient where it is reduced from
      std::tie(bd.bucket, bd.offset) = reserve(n);
      ++state_[static_cast<size_t>(bd.bucket)].open;
      bd.view = buckets_.slice_flat(bd.bucket * bucket_numel_ + bd.offset, {n});
    } else {
      bd.bucket = -1;
      bd.view = take_landing(n);
    }
    bd.view.zero_();
    bind_grads(unit, bd.view);
  }

  void commit(size_t unit) override {
    unbind_grads(unit);
    Binding bd = std::exchange(bound_[unit], Binding{});
    DS_ASSERT(bd.view.defined(), "{} is committed but was not bound", layout_[unit].unit->name);
    const UnitLayout& u = layout_[unit];
    if (bd.bucket >= 0) {
      --state_[static_cast<size_t>(bd.bucket)].open;
      add_segment(bd.bucket, {unit, 0, u.chunk, bd.offset});
      return;
    }
    const float* g = bd.view.data<float>();
    if (u.padded <= bucket_numel_) {  // 16-bit: rounded into its segment in its own layout
      const auto [b, offset] = reserve(u.padded);
      from_f32(bucket_at(b, offset), g, options_.grads, static_cast<size_t>(u.padded));
      add_segment(b, {unit, 0, u.chunk, offset});
    } else {  // larger than a bucket: pieces of s elements of every rank's chunk
      const int N = layout_.world();
      const int64_t s_max = bucket_numel_ / N;
      for (int64_t col = 0; col < u.chunk; col += s_max) {
        const int64_t s = std::min(s_max, u.chunk - col);
        const auto [b, offset] = reserve(N * s);
        for (int r = 0; r < N; ++r)
          from_f32(bucket_at(b, offset + r * s), g + r * u.chunk + col, options_.grads, static_cast<size_t>(s));
        add_segment(b, {unit, col, s, offset});
      }
    }
    return_landing(bd.view);
  }

  float* unit_grads(size_t unit) override {
    DS_ASSERT(bound_[unit].view.defined(), "{} has no gradient bucket outside its backward", layout_[unit].unit->name);
    return bound_[unit].view.data<float>();
  }

  // Every rank receives all ranks' rows and adds those elements it owns to its gradient partition; the rows of one
  // token are summed first, in rank order then position order, so the result does not depend on timing. The
  // reductions in flight land first, so each element is summed in the same order as without buckets.
  void accumulate_rows(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) override {
    flush();
    const int64_t C = p.shape[1];
    const int32_t* all = rows_.gather_ids(ids, n);
    float* all_rows = rows_.rows(layout_.world() * n * C);
    comm_.all_gather(rows, all_rows, static_cast<size_t>(n * C), DType::f32);
    rows_.for_each_row_sum(all, all_rows, layout_.world() * n, C, [&](int32_t id, const float* sum) {
      const int64_t begin = p.offset + int64_t(id) * C;
      layout_.for_owned(begin, begin + C, [&](int64_t flat, int64_t part, int64_t count) {
        comm::fold_f32_into(offset_bytes(part_grads_.raw(), part), options_.grads, sum + (flat - begin),
                      static_cast<size_t>(count));
      });
    });
  }

  void drain() override {
    flush();
    for (size_t b = 0; b < state_.size(); ++b) {
      if (state_[b].open == 0) recycle(static_cast<int>(b));
    }
    current_ = 0;
  }

  Tensor owned_chunk(size_t unit) override {
    return part_grads_.slice_flat(layout_[unit].part_offset, {layout_[unit].chunk});
  }

 private:
  struct Segment {
    size_t unit;
    int64_t col, len;  // elements [col, col + len) of every rank's chunk of the unit
    int64_t offset;    // in the bucket; N blocks of len elements
    comm::WorkPtr work = nullptr;
    bool issued = false;
  };
  struct Bucket {
    int64_t fill = 0;
    int open = 0;         // units bound into it and not yet committed
    bool closed = false;  // reduced as a whole: later segments are issued as they come
    std::vector<Segment> segments;
  };
  struct Binding {
    int bucket = -1;  // -1: a landing buffer
    int64_t offset = 0;
    Tensor view;      // where the model writes the unit's fp32 gradient
  };

  std::byte* bucket_at(int b, int64_t offset) { return offset_bytes(buckets_.raw(), b * bucket_numel_ + offset); }
  // This rank's block of a segment: where its reduce-scatter leaves this rank's share, in place.
  std::byte* own_block(int b, const Segment& seg) { return bucket_at(b, seg.offset + layout_.rank() * seg.len); }

  // Room for n elements in the current bucket, moving to the next (once its reductions are done) when it is
  // closed or full.
  std::pair<int, int64_t> reserve(int64_t n) {
    Bucket* c = &state_[static_cast<size_t>(current_)];
    if (c->closed || c->fill + n > bucket_numel_) {
      close(current_);
      current_ = (current_ + 1) % static_cast<int>(state_.size());
      recycle(current_);
      c = &state_[static_cast<size_t>(current_)];
    }
    const int64_t offset = c->fill;
    c->fill += n;
    return {current_, offset};
  }

  void add_segment(int b, Segment seg) {
    Bucket& bucket = state_[static_cast<size_t>(b)];
    bucket.segments.push_back(std::move(seg));
    if (!options_.overlap && !bucket.closed) return;  // reduced with the bucket
    issue(b, bucket.segments.back());
    if (!options_.overlap) {
      complete(b, bucket.segments.back());
      return;
    }
    // As DeepSpeed's stage 3: at most kMaxInFlight reductions outstanding; the oldest completes first.
    while (in_flight_.size() > kMaxInFlight) {
      const auto [ob, index] = in_flight_.front();
      complete(ob, state_[static_cast<size_t>(ob)].segments[index]);
    }
  }

  void issue(int b, Segment& seg) {
    seg.work = options_.quantized
                   ? quantized_reduce_scatter_async(comm_, bucket_at(b, seg.offset), static_cast<size_t>(seg.len),
                                                    options_.grads, kQuantizedGradients)
                   : comm_.reduce_scatter_async(bucket_at(b, seg.offset), own_block(b, seg),
                                                static_cast<size_t>(seg.len), options_.grads);
    seg.issued = true;
    in_flight_.emplace_back(b, static_cast<size_t>(&seg - state_[static_cast<size_t>(b)].segments.data()));
  }

  void complete(int b, Segment& seg) {
    if (!seg.work) return;
    comm::WorkPtr w = std::exchange(seg.work, nullptr);
    const std::pair<int, size_t> id(b, static_cast<size_t>(&seg - state_[static_cast<size_t>(b)].segments.data()));
    in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), id));
    w->wait();
    const UnitLayout& u = layout_[seg.unit];
    accumulate(offset_bytes(part_grads_.raw(), u.part_offset + seg.col), own_block(b, seg), seg.len);
  }

  // Issues what the bucket holds (without overlap_comm: and waits for it).
  void close(int b) {
    Bucket& bucket = state_[static_cast<size_t>(b)];
    if (bucket.closed) return;
    bucket.closed = true;
    for (Segment& s : bucket.segments)
      if (!s.issued) issue(b, s);
    if (!options_.overlap)
      for (Segment& s : bucket.segments) complete(b, s);
  }

  // Completes the bucket's reductions and empties it for reuse.
  void recycle(int b) {
    Bucket& bucket = state_[static_cast<size_t>(b)];
    DS_ASSERT(bucket.open == 0, "more units are bound at once than {} gradient bucket(s) of {} elements can hold",
              state_.size(), bucket_numel_);
    for (Segment& s : bucket.segments) {
      DS_ASSERT(s.issued, "a segment of an open bucket was recycled");
      complete(b, s);
    }
    bucket.segments.clear();  // keeps its capacity: steady-state steps allocate nothing
    bucket.fill = 0;
    bucket.closed = false;
  }

  // Closes the current bucket and completes every reduction issued so far.
  void flush() {
    close(current_);
    for (size_t b = 0; b < state_.size(); ++b)
      for (Segment& s : state_[b].segments) complete(static_cast<int>(b), s);
  }

  const bool direct_;  // fp32 gradients: a unit that fits lands in its bucket
  Tensor part_grads_;  // the owned gradient partition
  Tensor buckets_;
  std::vector<Bucket> state_;
  std::vector<Binding> bound_;
  int current_ = 0;
  std::deque<std::pair<int, size_t>> in_flight_;  // (bucket, segment) issued and not completed, in issue order
  static constexpr size_t kMaxInFlight = 2;
};

}  // namespace

std::unique_ptr<GradientReducer> make_partitioned_gradient_reducer(const PartitionLayout& layout,
                                                                   comm::Communicator& comm, RowExchange& rows,
                                                                   const GradientReducer::Options& options) {
  return std::make_unique<PartitionedGradientReducer>(layout, comm, rows, options);
}

}  // namespace ds::zero
