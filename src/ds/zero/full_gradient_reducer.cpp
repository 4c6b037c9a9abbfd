// Full gradients (stages 0-1, see gradient_reducer.h): the whole gradient accumulates in the store's flat buffer and
// is reduced there, in place, at the accumulation boundary. Stage 0 all-reduces runs of consecutive units of up to a
// bucket as one collective; stage 1 reduce-scatters each unit into its owned chunk, and packs the pieces of a unit
// larger than a bucket (Note [Gradient buckets]). With overlap_comm a unit is scheduled when its backward ends on
// the last micro-batch, except the slices of a row-sliced parameter: the embedding adds to their gradients at the
// very end, so they are scheduled when the micro-batch ends.
#include <algorithm>
#include <cstring>
#include <deque>

#include "ds/core/error.h"
#include "ds/ops/ops.h"
#include "ds/zero/gradient_reducer.h"

namespace ds::zero {
namespace {

class FullGradientReducer final : public GradientReducer {
 public:
  FullGradientReducer(const PartitionLayout& layout, nn::ParameterStore& store, comm::Communicator& comm,
                      RowExchange& rows, const Options& options)
      : GradientReducer(layout, comm, rows, options), store_(store), landed_(layout.size()) {
    DS_ASSERT(store.flat_grads().defined() && store.flat_grads().dtype() == options.grads,
              "full gradients need the store's flat buffer in {}", dtype_name(options.grads));
    DS_ASSERT(options.lands || options.grads == DType::f32, "16-bit gradients must land in fp32 first");
    // Pieces are packed only for stage 1 units larger than a bucket: one pack buffer, two with overlap_comm.
    bool oversize = false;
    for (const UnitLayout& u : layout.units()) oversize = oversize || u.padded > bucket_numel_;
    if (!layout.replicated() && oversize) {
      packs_ = Tensor::empty({(options.overlap ? 2 : 1) * bucket_numel_}, options.grads, Category::comm_buffer);
      pack_busy_.assign(options.overlap ? 2 : 1, false);
    }
  }
  ~FullGradientReducer() override {
    for (Pending& p : pending_) wait_quietly(p.work);
  }

  int bucket_count() const override { return static_cast<int>(pack_busy_.size()); }

  void begin_batch() override {
    drain();
    store_.zero_grad();
  }

  void end_micro_batch(bool last) override {
    if (!last || local_) return;
    if (options_.overlap) {  // the other units were scheduled as their backward ended
      for (size_t unit : deferred_) schedule(unit);
      deferred_.clear();
    } else {
      for (size_t unit = 0; unit < layout_.size(); ++unit) schedule(unit);
    }
    flush_run();
    drain();
  }

  void bind(size_t unit) override {
    DS_ASSERT(options_.lands, "gradients are bound by the store");
    landed_[unit] = take_landing(layout_[unit].padded);
    landed_[unit].zero_();
    bind_grads(unit, landed_[unit]);
  }

  void commit(size_t unit) override {
    if (options_.lands) {  // the unit's fp32 gradient is added to the full gradient, rounded once
      unbind_grads(unit);
      accumulate_f32(flat(layout_[unit].offset), landed_[unit].data<float>(), layout_[unit].padded);
      return_landing(landed_[unit]);
      landed_[unit] = Tensor();
    }
    if (!options_.overlap || !last_micro_ || local_) return;
    if (layout_[unit].unit->sliced) {
      deferred_.push_back(unit);
    } else {
      schedule(unit);
    }
  }

  float* unit_grads(size_t unit) override {
    if (!options_.lands) return store_.flat_grads().data<float>() + layout_[unit].offset;
    DS_ASSERT(landed_[unit].defined(), "{} has no gradient buffer outside its backward", layout_[unit].unit->name);
    return landed_[unit].data<float>();
  }

  // The rows of one token are summed first, then added to the full gradient, which the boundary reduces.
  void accumulate_rows(const nn::Parameter& p, const int32_t* ids, const float* rows, int64_t n) override {
    const int64_t C = p.shape[1];
    rows_.for_each_row_sum(ids, rows, n, C, [&](int32_t id, const float* sum) {
      accumulate_f32(flat(p.offset + int64_t(id) * C), sum, C);
    });
  }

  void drain() override {
    while (!pending_.empty()) complete_oldest();
  }

  Tensor owned_chunk(size_t unit) override {
    return store_.flat_grads().slice_flat(layout_[unit].own, {layout_[unit].chunk});
  }

 protected:
  // Stage 0 sums the whole flat buffer at once (the fixed blocks of the sum of squares then match a single process).
  double local_sum_squares() override {
    if (layout_.replicated() && !skips())
      return ops::sum_squares(store_.flat_grads().slice_flat(0, {layout_.padded_numel()}));
    return GradientReducer::local_sum_squares();
  }

 private:
  struct Pending {
    comm::WorkPtr work;
    int pack = -1;  // a packed piece: its pack buffer, unit and chunk range
    size_t unit = 0;
    int64_t col = 0, len = 0;
  };

  std::byte* flat(int64_t offset) { return offset_bytes(store_.flat_grads().raw(), offset); }
  std::byte* pack(int slot) { return offset_bytes(packs_.raw(), slot * bucket_numel_); }

  void schedule(size_t unit) {
    if (layout_.replicated()) {
      schedule_all_reduce(unit);
    } else {
      schedule_reduce_scatter(unit);
    }
  }

  // Stage 0: extends the open run of consecutive units, or reduces it and starts another.
  void schedule_all_reduce(size_t unit) {
    const UnitLayout& u = layout_[unit];
    const bool adjacent = run_end_ > run_begin_ && (u.offset + u.padded == run_begin_ || u.offset == run_end_);
    if (adjacent && run_end_ - run_begin_ + u.padded <= bucket_numel_) {
      run_begin_ = std::min(run_begin_, u.offset);
      run_end_ = std::max(run_end_, u.offset + u.padded);
      return;
    }
    flush_run();
    if (u.padded <= bucket_numel_) {
      run_begin_ = u.offset;
      run_end_ = u.offset + u.padded;
      return;
    }
    for (int64_t at = 0; at < u.padded; at += bucket_numel_)  // a unit larger than a bucket, in pieces
      all_reduce(u.offset + at, std::min(bucket_numel_, u.padded - at));
  }

  void flush_run() {
    if (run_end_ > run_begin_) all_reduce(run_begin_, run_end_ - run_begin_);
    run_begin_ = run_end_ = 0;
  }

  void all_reduce(int64_t offset, int64_t n) {
    pending_.push_back({comm_.all_reduce_async(flat(offset), static_cast<size_t>(n), options_.grads)});
  }

  // Stage 1: in place into the owned chunk, or packed pieces for a unit larger than a bucket.
  void schedule_reduce_scatter(size_t unit) {
    const UnitLayout& u = layout_[unit];
    const DType gd = options_.grads;
    const size_t es = dtype_size(gd);
    if (u.padded <= bucket_numel_) {
      pending_.push_back({comm_.reduce_scatter_async(flat(u.offset), flat(u.own), static_cast<size_t>(u.chunk), gd)});
      return;
    }
    const int N = layout_.world();
    const int64_t s_max = bucket_numel_ / N;
    for (int64_t col = 0; col < u.chunk; col += s_max) {
      const int64_t s = std::min(s_max, u.chunk - col);
      const int slot = take_pack();
      std::byte* buf = pack(slot);
      for (int r = 0; r < N; ++r)
        std::memcpy(buf + r * s * es, flat(u.offset + r * u.chunk + col), static_cast<size_t>(s) * es);
      comm::WorkPtr w = comm_.reduce_scatter_async(buf, buf + layout_.rank() * s * es, static_cast<size_t>(s), gd);
      pending_.push_back({std::move(w), slot, unit, col, s});
    }
  }

  int take_pack() {
    for (;;) {
      for (size_t i = 0; i < pack_busy_.size(); ++i) {
        if (pack_busy_[i]) continue;
        pack_busy_[i] = true;
        return static_cast<int>(i);
      }
      DS_ASSERT(!pending_.empty(), "every pack buffer is busy with no reduction in flight");
      complete_oldest();  // may free a pack
    }
  }

  void complete_oldest() {
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    p.work->wait();
    if (p.pack < 0) return;
    // A packed piece: this rank's block of the pack is its reduced share of the piece.
    const size_t es = dtype_size(options_.grads);
    std::memcpy(flat(layout_[p.unit].own + p.col), pack(p.pack) + layout_.rank() * p.len * es,
                static_cast<size_t>(p.len) * es);
    pack_busy_[static_cast<size_t>(p.pack)] = false;
  }

  nn::ParameterStore& store_;
  std::vector<Tensor> landed_;  // lands: per unit, its fp32 gradient while bound
  std::vector<size_t> deferred_;
  int64_t run_begin_ = 0, run_end_ = 0;  // stage 0: the open run of consecutive units
  std::deque<Pending> pending_;
  Tensor packs_;
  std::vector<bool> pack_busy_;
};

}  // namespace

std::unique_ptr<GradientReducer> make_full_gradient_reducer(const PartitionLayout& layout, nn::ParameterStore& store,
                                                            comm::Communicator& comm, RowExchange& rows,
                                                            const GradientReducer::Options& options) {
  return std::make_unique<FullGradientReducer>(layout, store, comm, rows, options);
}

}  // namespace ds::zero
