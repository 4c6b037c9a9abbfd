// MemoryTracker accounting, peaks, limits and OutOfMemory messages; Arena reuse; Tensor views.
#include <gtest/gtest.h>

#include "ds/core/memory.h"
#include "ds/core/tensor.h"
#include "ds/nn/module.h"

using namespace ds;

TEST(MemoryTracker, CountsCurrentAndPeakPerTierAndCategory) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  {
    Tensor a = Tensor::empty({1000}, DType::f32, Category::param);
    Tensor b = Tensor::empty({500}, DType::bf16, Category::grad, Tier::host);
    EXPECT_EQ(tr.current(Tier::device, Category::param), 4000);
    EXPECT_EQ(tr.current(Tier::host, Category::grad), 1000);
    EXPECT_EQ(tr.current(Tier::device), 4000);
    {
      Tensor c = Tensor::empty({250}, DType::f32, Category::activation);
      EXPECT_EQ(tr.current(Tier::device), 5000);
    }
    EXPECT_EQ(tr.current(Tier::device), 4000);
    EXPECT_EQ(tr.peak(Tier::device), 5000);
    EXPECT_EQ(tr.peak(Tier::device, Category::activation), 1000);
  }
  EXPECT_EQ(tr.current(Tier::device), 0);
  EXPECT_EQ(tr.current(Tier::host), 0);
  EXPECT_EQ(tr.peak(Tier::host), 1000);
  tr.reset_peaks();
  EXPECT_EQ(tr.peak(Tier::device), 0);
}

TEST(MemoryTracker, LimitRaisesOutOfMemoryNamingTierCategoryRequestAndPeak) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  tr.set_limit(Tier::device, 4096);
  Tensor a = Tensor::empty({512}, DType::f32, Category::param);  // 2048 bytes
  try {
    Tensor b = Tensor::empty({1024}, DType::f32, Category::optimizer);  // 4096 more: over
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("device"), std::string::npos) << msg;
    EXPECT_NE(msg.find("optimizer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("4.0 KiB"), std::string::npos) << msg;  // the request
    EXPECT_NE(msg.find("peak"), std::string::npos) << msg;
  }
  // The failed request recorded nothing.
  EXPECT_EQ(tr.current(Tier::device), 2048);
  Tensor c = Tensor::empty({512}, DType::f32, Category::param);  // exactly at the limit is fine
  EXPECT_EQ(tr.current(Tier::device), 4096);
}

TEST(MemoryTracker, ScopesNestPerThread) {
  MemoryTracker outer, inner;
  TrackerScope s1(outer);
  {
    TrackerScope s2(inner);
    Tensor t = Tensor::empty({10}, DType::f32, Category::param);
    EXPECT_EQ(inner.current(Tier::device), 40);
    EXPECT_EQ(outer.current(Tier::device), 0);
  }
  Tensor t = Tensor::empty({10}, DType::f32, Category::param);
  EXPECT_EQ(outer.current(Tier::device), 40);
}

TEST(Arena, SteadyStateReusesOneChunkOfHighWaterSize) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  nn::Arena arena(Category::activation);
  for (int pass = 0; pass < 3; ++pass) {
    arena.reset();
    for (int i = 0; i < 5; ++i) {
      Tensor t = arena.alloc({int64_t(2) << 20});  // 8 MiB each, 40 MiB total > one 16 MiB chunk
      t.data<float>()[0] = 1.0f;
    }
  }
  // After the first pass the arena holds one chunk big enough for a whole pass.
  EXPECT_EQ(arena.capacity(), 5 * (int64_t(8) << 20));
  EXPECT_EQ(tr.current(Tier::device, Category::activation), 5 * (int64_t(8) << 20));
}

TEST(Arena, MarkAndReleaseRecycleTemporaries) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  nn::Arena arena(Category::workspace);
  Tensor keep = arena.alloc({16});
  const size_t mark = arena.mark();
  Tensor tmp = arena.alloc({1000});
  arena.release(mark);
  Tensor again = arena.alloc({1000});
  EXPECT_EQ(again.raw(), tmp.raw());
  EXPECT_NE(keep.raw(), again.raw());
}

TEST(Tensor, ViewsShareStorageAndCheckShapes) {
  Tensor t = Tensor::zeros({4, 3});
  Tensor row = t.narrow(1, 2);
  EXPECT_EQ(row.shape(), Shape({2, 3}));
  row.data<float>()[0] = 5.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
  EXPECT_EQ(t.view({12}).data<float>()[3], 5.0f);
  EXPECT_THROW(t.view({5, 3}), ShapeError);
  EXPECT_THROW(t.narrow(3, 2), ShapeError);
  EXPECT_THROW(t.slice_flat(10, {3}), ShapeError);
  EXPECT_THROW(t.data<int32_t>(), InternalError);
}

TEST(Tensor, CopyConvertsThroughBf16AndF16) {
  Tensor a = Tensor::empty({4});
  float vals[4] = {1.0f, -2.5f, 65504.0f, 0.333333f};
  for (int i = 0; i < 4; ++i) a.data<float>()[i] = vals[i];
  Tensor h = Tensor::empty({4}, DType::f16);
  h.copy_from(a);
  Tensor back = Tensor::empty({4});
  back.copy_from(h);
  EXPECT_EQ(back.data<float>()[0], 1.0f);
  EXPECT_EQ(back.data<float>()[1], -2.5f);
  EXPECT_EQ(back.data<float>()[2], 65504.0f);
  EXPECT_NEAR(back.data<float>()[3], 0.333333f, 1e-3);
  Tensor b = Tensor::empty({4}, DType::bf16);
  b.copy_from(a);
  back.copy_from(b);
  EXPECT_EQ(back.data<float>()[1], -2.5f);
  EXPECT_NEAR(back.data<float>()[3], 0.333333f, 2e-3);
}

#ifndef DS_WITH_CUDA
TEST(Device, CudaTensorsInACpuBuildFailClearlyAndRecordNothing) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  EXPECT_FALSE(cuda::available());
  try {
    Tensor::empty({16}, DType::f32, Category::param, Tier::device, Device::cuda(0));
    FAIL() << "expected DeviceError";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("built without CUDA"), std::string::npos) << e.what();
  }
  EXPECT_EQ(tr.current(Tier::device), 0);
}
#endif

TEST(Arena, ReleaseAcrossANewChunkRestoresTheMark) {
  MemoryTracker tr;
  TrackerScope scope(tr);
  nn::Arena arena(Category::workspace);
  Tensor keep = arena.alloc({1024});
  const size_t mark = arena.mark();
  Tensor big = arena.alloc({int64_t(5) << 20});  // 20 MiB: does not fit the first 16 MiB chunk
  Tensor big2 = arena.alloc({int64_t(1) << 20});
  EXPECT_GT(arena.capacity(), int64_t(16) << 20);
  arena.release(mark);
  EXPECT_EQ(arena.mark(), mark);
  Tensor again = arena.alloc({1024});
  EXPECT_EQ(static_cast<char*>(again.raw()), static_cast<char*>(keep.raw()) + 4096);
}
