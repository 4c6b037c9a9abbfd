// ParameterStore layout: row-sliced parameters become consecutive units, padded only after the last slice, so the
// parameter stays contiguous; slice_rows picks slice sizes that keep every slice but the last aligned; a store
// materialized without parameters binds no data.
#include <gtest/gtest.h>

#include "ds/nn/parameter.h"

namespace {

using ds::nn::ParameterStore;

TEST(ParameterStore, SliceRowsKeepsSlicesAligned) {
  for (int64_t align : {1, 16, 32, 48, 64, 80, 16 * 7}) {
    for (int64_t cols : {128, 768, 100, 7}) {
      for (int64_t target : {int64_t(12) * 768 * 768, int64_t(100000), int64_t(1)}) {
        const int64_t rows = ParameterStore::slice_rows(50257, cols, target, align);
        EXPECT_GE(rows, 1);
        EXPECT_LE(rows, 50257);
        // One slice for the whole parameter may be padded; otherwise every slice but the last is aligned.
        if (rows < 50257) { EXPECT_EQ(rows * cols % align, 0) << "align " << align << " cols " << cols; }
      }
    }
  }
  EXPECT_EQ(ParameterStore::slice_rows(512, 128, 12 * 128 * 128, 64), 512);  // smaller than one slice: one unit
  EXPECT_EQ(ParameterStore::slice_rows(50257, 768, 12 * 768 * 768, 64), 9216);
}

TEST(ParameterStore, SlicedParameterIsContiguousAcrossItsUnits) {
  ParameterStore store;
  // 3 elements per row and alignment 16 need slices of 16 rows: a 10-row parameter is one unit.
  EXPECT_EQ(ParameterStore::slice_rows(10, 3, 9, 16), 10);
  ds::nn::Parameter* w = store.add_sliced("w", {10, 3}, 4);
  store.begin_unit("rest");
  ds::nn::Parameter* b = store.add("b", {5});
  store.materialize(4, /*with_grads=*/true, /*with_params=*/true);
  ASSERT_EQ(store.units().size(), 4u);  // rows [0:4], [4:8], [8:10], rest
  EXPECT_EQ(store.units()[0].name, "w[0:4]");
  EXPECT_EQ(store.units()[2].name, "w[8:10]");
  EXPECT_EQ(store.units()[0].offset, 0);
  EXPECT_EQ(store.units()[1].offset, 12);
  EXPECT_EQ(store.units()[2].offset, 24);
  EXPECT_EQ(store.units()[2].numel, 6);
  EXPECT_EQ(store.units()[2].padded_numel, 8);  // only the last slice is padded
  EXPECT_EQ(store.units()[3].offset, 32);
  EXPECT_EQ(w->offset, 0);
  EXPECT_EQ(b->offset, 32);
  EXPECT_EQ(w->data.data<float>(), store.flat_params().data<float>());
  EXPECT_TRUE(store.units()[0].params.empty());
  EXPECT_EQ(store.units()[1].sliced, w);
  EXPECT_EQ(store.numel(), 35);
}

TEST(ParameterStore, WithoutParametersNothingIsBound) {
  ParameterStore store;
  store.begin_unit("u");
  ds::nn::Parameter* p = store.add("p", {4, 4});
  store.materialize(8, /*with_grads=*/false, /*with_params=*/false);
  EXPECT_FALSE(store.flat_params().defined());
  EXPECT_FALSE(store.flat_grads().defined());
  EXPECT_FALSE(p->data.defined());
  EXPECT_EQ(store.padded_numel(), 16);
}

}  // namespace
