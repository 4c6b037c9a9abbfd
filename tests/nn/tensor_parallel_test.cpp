// Tensor-parallel pieces against their dense forms: a split parameter's shard and unshard (the fused QKV's three
// blocks, an uneven vocabulary), and column- then row-parallel linears over a local group computing what the dense
// pair computes, forward and backward.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "common/random_values.h"
#include "ds/comm/local/local_comm.h"
#include "ds/nn/tensor_parallel.h"

using namespace ds;
using namespace ds::nn;

TEST(TpSplit, ShardsTheFusedQkvByHeadsAndAnUnevenVocabularyByRows) {
  // A [2, 12] QKV weight (C = 4, 3 blocks of 4 columns) on rank 1 of 2: columns 2-3 of each block.
  TpSplit qkv{1, 3, 1, 2, Shape{2, 12}};
  EXPECT_EQ(qkv.local_shape(qkv.full), (Shape{2, 6}));
  std::vector<float> whole(24);
  std::iota(whole.begin(), whole.end(), 0.0f);
  std::vector<float> mine(12);
  qkv.shard(whole.data(), mine.data());
  EXPECT_EQ(mine, (std::vector<float>{2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23}));
  std::vector<float> back(24, -1.0f);
  qkv.unshard(mine.data(), back.data());
  for (int i = 0; i < 24; ++i) EXPECT_EQ(back[i], (i % 4 >= 2) ? whole[i] : -1.0f) << i;
  // 10 vocabulary rows over 4 ranks: 3, 3, 3, 1.
  for (int r = 0; r < 4; ++r) {
    TpSplit vocab{0, 1, r, 4, Shape{10, 2}};
    EXPECT_EQ(vocab.local_shape(vocab.full)[0], r < 3 ? 3 : 1);
  }
  TpSplit last{0, 1, 3, 4, Shape{10, 2}};
  std::vector<float> rows(20), piece(2);
  std::iota(rows.begin(), rows.end(), 0.0f);
  last.shard(rows.data(), piece.data());
  EXPECT_EQ(piece, (std::vector<float>{18, 19}));
}

namespace {
class Group final : public TensorParallelGroup {
 public:
  explicit Group(comm::Communicator& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  void all_reduce_sum(float* d, int64_t n) override { c_.all_reduce(d, size_t(n), DType::f32); }
  void all_reduce_max(float* d, int64_t n) override { c_.all_reduce(d, size_t(n), DType::f32, comm::ReduceOp::max); }

 private:
  comm::Communicator& c_;
};

// x [N, in] -> column(in, hidden) -> row(hidden, out); returns y and dx for dy, and the whole weight gradients.
struct PairResult {
  std::vector<float> y, dx, dw1, dw2, db2;
};

PairResult run_pair(ParameterStore& store, Linear& a, Linear& b, const std::vector<float>& w1,
                    const std::vector<float>& b1, const std::vector<float>& w2, const std::vector<float>& b2,
                    const std::vector<float>& x, const std::vector<float>& dy, int N) {
  store.materialize();
  auto load = [](Parameter* p, const std::vector<float>& whole) {
    if (p->tp.split()) {
      p->tp.shard(whole.data(), p->data.data<float>());
    } else {
      std::copy(whole.begin(), whole.end(), p->data.data<float>());
    }
  };
  load(a.weight(), w1), load(a.bias(), b1), load(b.weight(), w2), load(b.bias(), b2);
  Ctx ctx;
  Tensor xt = ctx.act().alloc({N, a.in_features()});
  std::copy(x.begin(), x.end(), xt.data<float>());
  Tensor y = b.forward(ctx, a.forward(ctx, xt));
  Tensor dyt = ctx.scratch().alloc({N, b.out_features()});
  std::copy(dy.begin(), dy.end(), dyt.data<float>());
  Tensor dx = a.backward(ctx, b.backward(ctx, dyt));
  auto whole = [](Parameter* p) {
    std::vector<float> out(static_cast<size_t>(p->full_shape().numel()), 0.0f);
    if (p->tp.split()) {
      p->tp.unshard(p->grad.data<float>(), out.data());
    } else {
      std::copy_n(p->grad.data<float>(), p->numel(), out.data());
    }
    return out;
  };
  return {std::vector<float>(y.data<float>(), y.data<float>() + y.numel()),
          std::vector<float>(dx.data<float>(), dx.data<float>() + dx.numel()), whole(a.weight()), whole(b.weight()),
          whole(b.bias())};
}
}  // namespace

TEST(TensorParallelLinear, ColumnThenRowEqualsTheDensePair) {
  constexpr int N = 5, in = 8, hidden = 12, out = 6;
  const std::vector<float> w1 = ds::testing::randn(in * hidden, 1), b1 = ds::testing::randn(hidden, 2),
                           w2 = ds::testing::randn(hidden * out, 3), b2 = ds::testing::randn(out, 4),
                           x = ds::testing::randn(N * in, 5), dy = ds::testing::randn(N * out, 6);
  ParameterStore dense_store;
  Linear da(dense_store, "a", in, hidden), db(dense_store, "b", hidden, out);
  const PairResult dense = run_pair(dense_store, da, db, w1, b1, w2, b2, x, dy, N);
  for (int world : {2, 3}) {
    std::vector<PairResult> got(static_cast<size_t>(world));
    comm::run_local_world(world, [&](comm::Communicator& c) {
      Group g(c);
      ParameterStore store;
      ColumnParallelLinear a(store, "a", in, hidden, true, 1, g);
      RowParallelLinear b(store, "b", hidden, out, true, g);
      EXPECT_EQ(a.out_features(), hidden / world);
      EXPECT_EQ(b.in_features(), hidden / world);
      PairResult r = run_pair(store, a, b, w1, b1, w2, b2, x, dy, N);
      std::vector<float> sum = r.dw1;  // each rank holds its columns of dw1: the group's sum is the whole
      c.all_reduce(sum.data(), sum.size(), DType::f32);
      r.dw1 = sum;
      sum = r.dw2;
      c.all_reduce(sum.data(), sum.size(), DType::f32);
      r.dw2 = sum;
      got[c.rank()] = r;
    });
    for (const PairResult& r : got) {
      auto near = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
        ASSERT_EQ(a.size(), b.size()) << what;
        for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(b[i]))) << what << i;
      };
      near(r.y, dense.y, "y");
      near(r.dx, dense.dx, "dx");
      near(r.dw1, dense.dw1, "dw1");
      near(r.dw2, dense.dw2, "dw2");
      near(r.db2, dense.db2, "db2 (replicated: every rank's whole)");
    }
  }
}

TEST(TensorParallelLinear, ASplitThatLeavesPartsOfHeadsIsAClearError) {
  comm::run_local_world(3, [&](comm::Communicator& c) {
    Group g(c);
    ParameterStore store;
    EXPECT_THROW(ColumnParallelLinear(store, "h.0.attn.c_attn", 8, 24, true, 3, g), ConfigError);
  });
}
