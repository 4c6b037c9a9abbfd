// The NVMe parameter partition with fewer buffers than units: every chunk written reads back after the others have
// pushed it out of memory; a view keeps its buffer (its bytes stay put while other chunks come and go); more chunks
// in use than buffers is a clear error; and buffers too small or too few are refused with the number to set.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <vector>

#include "common/scratch_dir.h"
#include "ds/core/error.h"
#include "ds/nn/parameter.h"
#include "ds/zero/swapped_params.h"

namespace ds::zero {
namespace {

class SwappedParams : public test::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    for (int u = 0; u < 6; ++u) {
      store_.begin_unit(fmt::format("u{}", u));
      store_.add(fmt::format("u{}.w", u), {1000 + 700 * u});
    }
    store_.materialize(1, /*with_grads=*/false, /*with_params=*/false);
    layout_ = std::make_unique<PartitionLayout>(store_.units(), 0, 1, false);
  }
  ParamSwapOptions options(int64_t buffers = 3) const {
    ParamSwapOptions o;
    o.dir = dir_.string();
    o.file_name = "params.swp";
    o.buffer_count = buffers;
    o.aio.block_size = 8192;
    return o;
  }
  static float value(size_t unit, int64_t i) { return static_cast<float>(unit) * 10000.0f + static_cast<float>(i); }

  nn::ParameterStore store_;
  std::unique_ptr<PartitionLayout> layout_;
};

TEST_F(SwappedParams, ChunksReadBackAfterBeingPushedOut) {
  SwappedPartition part(*layout_, DType::f32, options());
  for (size_t u = 0; u < layout_->size(); ++u) {
    const Tensor c = part.chunk(u, /*write=*/true);
    for (int64_t i = 0; i < c.numel(); ++i) c.data<float>()[i] = value(u, i);
  }
  part.sync();
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t u = layout_->size(); u-- > 0;) {
      const Tensor c = part.chunk(u, false);
      for (int64_t i = 0; i < c.numel(); ++i) ASSERT_EQ(c.data<float>()[i], value(u, i)) << "unit " << u;
    }
  }
  EXPECT_GT(part.stats().bytes_read, 0);  // 6 units through 3 buffers: some came back from the file
}

TEST_F(SwappedParams, AViewKeepsItsBufferAndTooManyInUseIsAnError) {
  SwappedPartition part(*layout_, DType::f32, options());
  for (size_t u = 0; u < layout_->size(); ++u) {
    const Tensor c = part.chunk(u, true);
    for (int64_t i = 0; i < c.numel(); ++i) c.data<float>()[i] = value(u, i);
  }
  const Tensor held = part.chunk(0, false);
  for (size_t u = 1; u < layout_->size(); ++u) part.chunk(u, false);  // the other buffers rotate
  for (int64_t i = 0; i < held.numel(); ++i) ASSERT_EQ(held.data<float>()[i], value(0, i));
  const Tensor second = part.chunk(1, false), third = part.chunk(2, false);
  try {
    part.chunk(3, false);
    ADD_FAILURE() << "a fourth chunk in use with three buffers";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("raise offload_param.buffer_count"), std::string::npos) << e.what();
  }
}

TEST_F(SwappedParams, BuffersTooSmallOrTooFewAreRefused) {
  ParamSwapOptions small = options();
  small.buffer_size = 1000;  // the largest chunk has 4500 elements
  try {
    SwappedPartition part(*layout_, DType::f32, small);
    ADD_FAILURE() << "buffers smaller than a chunk";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("set buffer_size to at least 4500"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SwappedPartition(*layout_, DType::f32, options(2)), ConfigError);
}

}  // namespace
}  // namespace ds::zero
