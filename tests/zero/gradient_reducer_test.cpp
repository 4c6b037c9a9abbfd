// The gradient reducers against the unpartitioned reduction: every rank writes its own gradient values into four
// units of different sizes in backward order, and the owned chunks must then hold, element by element, the sum
// over ranks (and micro-batches) computed here directly, with padding still zero. Values are small multiples of
// 1/2, so every sum is exact in fp32 and bf16 and the comparison is exact. Run at worlds 1, 2 and 4 on the thread
// backend with reduce_bucket_size smaller than a unit (pieces), equal to the largest unit, spanning several
// units, and DeepSpeed's default, with and without overlap_comm; traffic is checked against Note [Traffic
// accounting] and the number of reduce-scatters against the bucket layout (Note [Gradient buckets]).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "ds/comm/local/local_comm.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/zero/gradient_reducer.h"

namespace ds::zero {
namespace {

// Four units, each parameter's elements consecutive: a = {40, 8}, b = {300} (the largest), c = {10}, d = {130, 70}.
void declare(nn::ParameterStore& store) {
  store.begin_unit("a");
  store.add("a.w", {40});
  store.add("a.b", {8});
  store.begin_unit("b");
  store.add("b.w", {300});
  store.begin_unit("c");
  store.add("c.w", {10});
  store.begin_unit("d");
  store.add("d.w", {13, 10});
  store.add("d.b", {70});
}

float value(int rank, int64_t flat, int micro) { return 0.5f * float(rank + 1) + float((flat * 7 + micro * 3) % 11); }

enum class Size { smaller_than_a_unit, one_unit, several_units, deepspeed_default };
const char* size_name(Size s) {
  switch (s) {
    case Size::smaller_than_a_unit: return "smaller";
    case Size::one_unit: return "unit";
    case Size::several_units: return "several";
    case Size::deepspeed_default: return "default";
  }
  return "?";
}

struct Case {
  int stage;  // 0, 1: full gradients; 2: partitioned (stage 3's gradients are stage 2's)
  int world;
  Size size;
  bool overlap;
  DType grads;
  int gas;
  std::string name() const {
    return fmt::format("stage {} world {} bucket {} overlap {} {} gas {}", stage, world, size_name(size), overlap,
                       dtype_name(grads), gas);
  }
};

int64_t bucket_for(Size size, const std::vector<nn::ParamUnit>& units) {
  int64_t largest = 0;
  for (const nn::ParamUnit& u : units) largest = std::max(largest, u.padded_numel);
  switch (size) {
    case Size::smaller_than_a_unit: return 64;
    case Size::one_unit: return largest;
    case Size::several_units: return units[1].padded_numel + units[2].padded_numel + units[3].padded_numel;
    case Size::deepspeed_default: return 500000000;
  }
  return 0;
}

struct Observed {
  int64_t reduce_scatters = 0, all_reduces = 0, ring_bytes = 0;
  int64_t issued_before_boundary = 0;  // reduce-scatters issued before the last micro-batch ended
  int64_t bucket_numel = 0;
  int bucket_count = 0;
  std::string mismatch;
};

Observed run(const Case& c) {
  std::vector<Observed> seen(static_cast<size_t>(c.world));
  comm::run_local_world(c.world, [&](comm::Communicator& comm) {
    const int rank = comm.rank();
    Observed& o = seen[static_cast<size_t>(rank)];
    nn::ParameterStore store;
    declare(store);
    const bool full = c.stage < 2;
    store.materialize(PartitionLayout::alignment(c.world), /*with_grads=*/full, /*with_params=*/false, DType::f32,
                      c.grads);
    const PartitionLayout layout(store.units(), rank, c.world, /*replicated=*/c.stage == 0);
    RowExchange rows(comm);
    GradientReducer::Options options;
    options.grads = c.grads;
    options.lands = !full || c.grads != DType::f32;
    options.overlap = c.overlap;
    options.bucket_numel = bucket_for(c.size, store.units());
    auto reducer = full ? make_full_gradient_reducer(layout, store, comm, rows, options)
                        : make_partitioned_gradient_reducer(layout, comm, rows, options);
    o.bucket_numel = reducer->bucket_numel();
    o.bucket_count = reducer->bucket_count();
    comm.stats().reset();
    reducer->begin_batch();
    for (int micro = 0; micro < c.gas; ++micro) {
      const bool last = micro + 1 == c.gas;
      reducer->begin_micro_batch(last);
      for (size_t i = layout.size(); i-- > 0;) {  // backward: the last unit first
        if (reducer->lands()) reducer->bind(i);
        float* g = reducer->unit_grads(i);
        for (const nn::Parameter* p : layout[i].unit->params)
          for (int64_t e = p->offset; e < p->offset + p->numel(); ++e) g[e - layout[i].offset] += value(rank, e, micro);
        reducer->commit(i);
      }
      if (last) o.issued_before_boundary = comm.stats().calls[static_cast<size_t>(comm::Collective::reduce_scatter)];
      reducer->end_micro_batch(last);
    }
    o.reduce_scatters = comm.stats().calls[static_cast<size_t>(comm::Collective::reduce_scatter)];
    o.all_reduces = comm.stats().calls[static_cast<size_t>(comm::Collective::all_reduce)];
    o.ring_bytes = comm.stats().total_bytes();
    // The owned chunks against the sum over ranks and micro-batches.
    std::vector<float> got;
    for (size_t i = 0; i < layout.size() && o.mismatch.empty(); ++i) {
      const UnitLayout& u = layout[i];
      got.resize(static_cast<size_t>(u.chunk));
      cpu::to_f32(got.data(), reducer->owned_chunk(i).raw(), c.grads, got.size());
      const int64_t params_end = u.offset + u.unit->numel;
      for (int64_t k = 0; k < u.chunk; ++k) {
        const int64_t flat = u.own + k;
        float want = 0;
        if (flat < params_end)
          for (int r = 0; r < c.world; ++r)
            for (int m = 0; m < c.gas; ++m) want += value(r, flat, m);
        if (got[static_cast<size_t>(k)] != want) {
          o.mismatch = fmt::format("rank {} unit {} element {}: {} instead of {}", rank, u.unit->name, flat,
                                   got[static_cast<size_t>(k)], want);
          break;
        }
      }
    }
  });
  for (const Observed& o : seen)
    if (!o.mismatch.empty()) return o;
  return seen[0];
}

TEST(GradientReducer, MatchesTheUnpartitionedReductionWithTheRingTraffic) {
  int cases = 0;
  for (int world : {1, 2, 4}) {
    nn::ParameterStore probe;
    declare(probe);
    probe.materialize(PartitionLayout::alignment(world), false, false);
    int64_t total = 0;
    for (const nn::ParamUnit& u : probe.units()) total += u.padded_numel;
    for (int stage : {0, 1, 2}) {
      for (Size size : {Size::smaller_than_a_unit, Size::one_unit, Size::several_units, Size::deepspeed_default}) {
        for (bool overlap : {false, true}) {
          for (DType grads : {DType::f32, DType::bf16}) {
            for (int gas : {1, 2}) {
              const Case c{stage, world, size, overlap, grads, gas};
              const Observed o = run(c);
              ++cases;
              ASSERT_TRUE(o.mismatch.empty()) << c.name() << ": " << o.mismatch;
              const int64_t es = static_cast<int64_t>(dtype_size(grads));
              const int64_t bucket = std::min(bucket_for(size, probe.units()) / world * world, total);
              EXPECT_EQ(o.bucket_numel, bucket) << c.name();
              // Traffic: every padded element reduced once per reduction (stages 0-1 at the boundary, stage 2 every
              // micro-batch): all-reduce 2n(W-1)/W, reduce-scatter n(W-1)/W.
              const int64_t reductions = stage == 2 ? gas : 1;
              const int64_t want_bytes = (stage == 0 ? 2 : 1) * total * es * (world - 1) / world * reductions;
              EXPECT_EQ(o.ring_bytes, want_bytes) << c.name();
              if (stage == 0) {
                EXPECT_EQ(o.reduce_scatters, 0) << c.name();
                if (bucket >= total && !overlap) { EXPECT_EQ(o.all_reduces, 1) << c.name(); }
                EXPECT_GE(o.all_reduces, (total + bucket - 1) / bucket) << c.name();
                continue;
              }
              // Stages 1-2: one reduce-scatter per unit that fits a bucket, one per piece of s = bucket/N
              // elements of its chunk otherwise.
              int64_t segments = 0;
              for (const nn::ParamUnit& u : probe.units()) {
                const int64_t chunk = u.padded_numel / world, s = bucket / world;
                segments += u.padded_numel <= bucket ? 1 : (chunk + s - 1) / s;
              }
              EXPECT_EQ(o.all_reduces, 0) << c.name();
              EXPECT_EQ(o.reduce_scatters, segments * reductions) << c.name();
              if (stage == 2) {
                EXPECT_EQ(o.bucket_count, overlap && bucket < total ? 2 : 1) << c.name();
                // Without overlap_comm a bucket is reduced when full or at the end: with the whole model in one
                // bucket nothing is issued before the boundary. With it, every segment is issued as it completes.
                const int64_t before = o.issued_before_boundary - segments * (reductions - 1);
                if (overlap) {
                  EXPECT_EQ(before, segments) << c.name();
                } else if (bucket >= total) {
                  EXPECT_EQ(before, 0) << c.name();
                }
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 3 * 3 * 4 * 2 * 2 * 2);
}

// Consecutive units share a bucket: with room for units d, c and b but not a, the first three (in backward
// order) are reduced together when a does not fit, then a at the end.
TEST(GradientReducer, ConsecutiveUnitsShareABucketUntilTheNextDoesNotFit) {
  comm::run_local_world(2, [](comm::Communicator& comm) {
    nn::ParameterStore store;
    declare(store);
    store.materialize(PartitionLayout::alignment(2), false, false);
    const PartitionLayout layout(store.units(), comm.rank(), 2, false);
    RowExchange rows(comm);
    GradientReducer::Options options;
    options.bucket_numel = layout[1].padded + layout[2].padded + layout[3].padded;
    auto reducer = make_partitioned_gradient_reducer(layout, comm, rows, options);
    auto issued = [&] { return comm.stats().calls[static_cast<size_t>(comm::Collective::reduce_scatter)]; };
    reducer->begin_batch();
    reducer->begin_micro_batch(true);
    std::vector<int64_t> after_commit;
    for (size_t i = layout.size(); i-- > 0;) {
      reducer->bind(i);
      reducer->commit(i);
      after_commit.push_back(issued());
    }
    EXPECT_EQ(after_commit, (std::vector<int64_t>{0, 0, 0, 3}));  // d, c, b wait; binding a closes their bucket
    reducer->end_micro_batch(true);
    EXPECT_EQ(issued(), 4);
  });
}

}  // namespace
}  // namespace ds::zero
