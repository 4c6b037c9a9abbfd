// The NVMe optimizer-state store against the resident store: the same random walk of tile accesses (reads, whole
// and partial writes, read-modify-writes, prefetch hints, out-of-order tiles, a kind at a time) applied to both,
// under each pipeline setting and buffer count, leaves the same values; the pipeline reads ahead and writes behind
// (each tile the optimizer's walk asks for was read ahead); an I/O error in the middle fails the step with the file's name and
// leaves the store refusing further use.
#include <gtest/gtest.h>

#include <vector>

#include "common/scratch_dir.h"
#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/zero/swapped_state.h"

namespace ds::zero {
namespace {

class SwappedState : public test::ScratchDirTest {
 protected:
  SwapOptions options(bool read_ahead, bool write_behind, int64_t buffers = 4) const {
    SwapOptions o;
    o.dir = dir_.string();
    o.file_name = "state.swp";
    o.buffer_count = buffers;
    o.pipeline_read = read_ahead;
    o.pipeline_write = write_behind;
    o.aio.block_size = 8192;
    o.aio.queue_depth = 4;
    return o;
  }
};

void expect_same(OptimizerStateStore& a, OptimizerStateStore& b, const std::string& what) {
  for (int k = 0; k < kStateKinds; ++k) {
    if (!(a.kinds() >> k & 1u)) continue;
    std::vector<float> x(static_cast<size_t>(a.numel())), y(x.size());
    read_state(a, StateKind(k), 0, a.numel(), x.data());
    read_state(b, StateKind(k), 0, b.numel(), y.data());
    EXPECT_EQ(x, y) << what << " " << state_name(StateKind(k));
  }
}

TEST_F(SwappedState, RandomAccessesMatchTheResidentStore) {
  constexpr int64_t kNumel = 10000, kTile = 1500;  // 7 tiles, the last one short
  for (const bool master : {false, true}) {
    for (const auto& [read_ahead, write_behind, buffers] :
         std::vector<std::tuple<bool, bool, int64_t>>{{false, false, 1}, {true, false, 4}, {false, true, 4},
                                                      {true, true, 4}, {true, true, 12}}) {
      const std::string what = fmt::format("master {} read-ahead {} write-behind {} buffers {}", master,
                                           read_ahead, write_behind, buffers);
      ResidentStateStore ref(kNumel, kTile, master);
      SwappedStateStore swapped(kNumel, kTile, master, options(read_ahead, write_behind, buffers));
      EXPECT_GE(swapped.buffer_slots(), 1 + int(read_ahead) + int(write_behind)) << what;
      Rng rng(7);
      for (int op = 0; op < 300; ++op) {
        const int64_t t = static_cast<int64_t>(rng.next_u64() % 7);
        StateMask which = static_cast<StateMask>(rng.next_u64() % 8) & ref.kinds();
        if (which == 0) which = kMoments;
        const int kind_pick = static_cast<int>(rng.next_u64() % 4);
        const TileAccess access = kind_pick == 0 ? TileAccess::read
                                  : kind_pick == 1 ? TileAccess::write
                                                   : TileAccess::read_write;
        if (rng.next_u64() % 3 == 0) swapped.prefetch((t + 1) % 7, which);
        const StateTile a = ref.acquire(t, which, access);
        const StateTile b = swapped.acquire(t, which, access);
        ASSERT_EQ(a.count, b.count);
        const float salt = static_cast<float>(op);
        for (int k = 0; k < kStateKinds; ++k) {
          if (!(which >> k & 1u)) continue;
          float* x = a.data(StateKind(k));
          float* y = b.data(StateKind(k));
          for (int64_t i = 0; i < a.count; ++i) {
            if (access == TileAccess::read) {
              ASSERT_EQ(x[i], y[i]) << what << " op " << op << " tile " << t << " element " << i;
            } else if (access == TileAccess::write) {
              x[i] = y[i] = salt + static_cast<float>(i * (k + 1));
            } else {
              ASSERT_EQ(x[i], y[i]) << what << " op " << op << " tile " << t << " element " << i;
              x[i] = y[i] = x[i] * 0.5f + salt;
            }
          }
        }
        ref.release(a);
        swapped.release(b);
      }
      swapped.sync();
      expect_same(ref, swapped, what);
      const auto stats = swapped.swap_stats();
      EXPECT_GT(stats.bytes_written, 0) << what;
      EXPECT_GT(stats.bytes_read, 0) << what;
    }
  }
}

TEST_F(SwappedState, NewStateReadsAsZeros) {
  SwappedStateStore s(5000, 1024, true, options(true, true));
  std::vector<float> v(5000, -1.0f);
  read_state(s, StateKind::exp_avg_sq, 0, 5000, v.data());
  EXPECT_EQ(v, std::vector<float>(5000, 0.0f));
}

// The optimizer's walk: prefetch(t+1), acquire(t) read-write, touch it, release(t). With the pipeline on, the tile
// asked for is already read (or being read) when it is acquired, and writes are not waited for at release.
TEST_F(SwappedState, ThePipelineReadsAheadAndWritesBehind) {
  constexpr int64_t kNumel = 1 << 20, kTile = 1 << 17;  // 8 tiles of 512 KiB per kind
  auto walk = [&](SwappedStateStore& s) {
    for (int pass = 0; pass < 3; ++pass) {
      for (int64_t t = 0; t < s.tile_count(); ++t) {
        if (t + 1 < s.tile_count()) s.prefetch(t + 1, s.kinds());
        const StateTile tile = s.acquire(t, s.kinds(), TileAccess::read_write);
        float* m = tile.data(StateKind::exp_avg);
        for (int64_t i = 0; i < tile.count; ++i) m[i] += 1.0f;
        s.release(tile);
      }
    }
    s.sync();
  };
  SwappedStateStore plain(kNumel, kTile, true, options(false, false));
  SwappedStateStore piped(kNumel, kTile, true, options(true, true));
  walk(plain);
  walk(piped);
  expect_same(plain, piped, "plain vs pipelined");
  std::vector<float> m(kNumel);
  read_state(piped, StateKind::exp_avg, 0, kNumel, m.data());
  EXPECT_EQ(m.front(), 3.0f);
  EXPECT_EQ(m.back(), 3.0f);
  EXPECT_EQ(piped.swap_stats().bytes_written, plain.swap_stats().bytes_written);
  EXPECT_EQ(plain.swap_stats().prefetch_hits, 0);
  EXPECT_EQ(piped.swap_stats().prefetch_hits, 3 * (piped.tile_count() - 1));  // every tile but each pass's first
}

TEST_F(SwappedState, AnIoErrorMidStepNamesTheFileAndStopsTheStore) {
  SwappedStateStore s(20000, 2000, true, options(true, true));
  std::vector<float> v(20000, 1.5f);
  write_state(s, StateKind::master, 0, 20000, v.data());
  s.sync();
  offload::inject_io_fault({/*on_write=*/true, /*after_bytes=*/0, /*error=*/EIO, false});
  bool failed = false;
  try {
    for (int64_t t = 0; t < s.tile_count(); ++t) {
      if (t + 1 < s.tile_count()) s.prefetch(t + 1, s.kinds());
      const StateTile tile = s.acquire(t, s.kinds(), TileAccess::read_write);
      s.release(tile);
    }
    s.sync();
  } catch (const IoError& e) {
    failed = true;
    EXPECT_NE(std::string(e.what()).find("state.swp"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Input/output error"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("resume from the last checkpoint"), std::string::npos) << e.what();
  }
  offload::clear_io_fault();
  EXPECT_TRUE(failed);
  try {
    s.acquire(0, kMoments, TileAccess::read);
    ADD_FAILURE() << "the store went on after an I/O error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("unusable after an earlier I/O error"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ds::zero
