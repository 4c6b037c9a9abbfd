// DataLoader: batches checked against windows computed here from the raw token sequence (never against the
// loader itself): shifted targets, ordered passes, permutations, rank slices, and exact resumption.
#include "ds/data/data_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "ds/core/error.h"

namespace ds::data {
namespace {

// Token value i at position i (mod 65536) makes every window identify its start: window w starts at w*T.
std::string make_shard(const std::string& name, size_t n, uint16_t base = 0) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / "ds_data_loader_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / name).string();
  std::vector<uint16_t> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = static_cast<uint16_t>(base + i);
  write_token_shard(path, tokens);
  return path;
}

struct Batch {
  std::vector<int32_t> x, y;
  bool operator==(const Batch&) const = default;
};

Batch next(DataLoader& loader) {
  Batch b{std::vector<int32_t>(size_t(loader.B()) * loader.T()), std::vector<int32_t>(size_t(loader.B()) * loader.T())};
  loader.next_batch(b.x.data(), b.y.data());
  return b;
}

TEST(DataLoader, SequentialBatchesAreContiguousChunks) {
  const int B = 2, T = 4;
  const auto path = make_shard("seq.bin", 2 * B * T + 3);  // 19 tokens -> 4 windows -> 2 batches
  DataLoader loader({path}, B, T, 0, 1, 7, false);
  EXPECT_EQ(loader.num_windows(), 4);
  EXPECT_EQ(loader.num_batches(), 2);
  for (int pass = 0; pass < 2; ++pass) {
    for (int g = 0; g < 2; ++g) {
      const Batch b = next(loader);
      for (int i = 0; i < B * T; ++i) {
        EXPECT_EQ(b.x[i], g * B * T + i) << "pass " << pass;  // llm.c: chunk[i], target chunk[i+1]
        EXPECT_EQ(b.y[i], g * B * T + i + 1);
      }
    }
    EXPECT_EQ(loader.epoch(), pass + 1);
  }
}

TEST(DataLoader, ShuffledEpochIsAPermutationOfWindowsWithShiftedTargets) {
  const int B = 3, T = 8;
  const auto path = make_shard("perm.bin", 30 * T + 1);  // 30 windows -> 10 batches
  DataLoader loader({path}, B, T, 0, 1, 123, true);
  ASSERT_EQ(loader.num_batches(), 10);
  std::vector<std::vector<int>> epochs(2);
  for (int e = 0; e < 2; ++e) {
    for (int g = 0; g < 10; ++g) {
      const Batch b = next(loader);
      for (int r = 0; r < B; ++r) {
        const int start = b.x[r * T];
        ASSERT_EQ(start % T, 0);
        for (int t = 0; t < T; ++t) {
          ASSERT_EQ(b.x[r * T + t], start + t);
          ASSERT_EQ(b.y[r * T + t], start + t + 1);
        }
        epochs[e].push_back(start / T);
      }
    }
  }
  for (const auto& order : epochs) {
    EXPECT_EQ(std::set<int>(order.begin(), order.end()).size(), 30u);  // every window exactly once
  }
  std::vector<int> identity(30);
  for (int i = 0; i < 30; ++i) identity[i] = i;
  EXPECT_NE(epochs[0], identity);
  EXPECT_NE(epochs[0], epochs[1]);  // a fresh permutation each epoch
}

TEST(DataLoader, DeterministicForASeedAndDifferentAcrossSeeds) {
  const auto path = make_shard("det.bin", 4097);
  DataLoader a({path}, 4, 16, 0, 1, 42, true), b({path}, 4, 16, 0, 1, 42, true), c({path}, 4, 16, 0, 1, 43, true);
  bool differs = false;
  for (int i = 0; i < 40; ++i) {
    const Batch ba = next(a), bb = next(b), bc = next(c);
    EXPECT_EQ(ba, bb);
    differs |= !(ba == bc);
  }
  EXPECT_TRUE(differs);
}

TEST(DataLoader, RankSlicesAreDisjointAndCoverTheGlobalBatch) {
  const int B = 2, T = 8, world = 4;
  const auto path = make_shard("ranks.bin", 50 * T + 5);
  for (const bool shuffle : {false, true}) {
    DataLoader global({path}, B * world, T, 0, 1, 99, shuffle);
    std::vector<DataLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(std::vector<std::string>{path}, B, T, r, world, 99, shuffle);
    ASSERT_EQ(ranks[0].num_batches(), global.num_batches());
    for (int step = 0; step < 2 * global.num_batches() + 1; ++step) {
      const Batch g = next(global);
      std::set<int32_t> starts;
      for (int r = 0; r < world; ++r) {
        const Batch b = next(ranks[r]);
        for (int i = 0; i < B * T; ++i) {
          ASSERT_EQ(b.x[i], g.x[r * B * T + i]) << "rank " << r << " step " << step;
          ASSERT_EQ(b.y[i], g.y[r * B * T + i]);
        }
        for (int row = 0; row < B; ++row) starts.insert(b.x[row * T]);
      }
      EXPECT_EQ(starts.size(), size_t(B * world)) << "ranks overlap at step " << step;
    }
  }
}

TEST(DataLoader, RestoreReproducesTheFollowingBatches) {
  const auto path = make_shard("resume.bin", 3000);
  DataLoader original({path}, 3, 10, 1, 2, 5, true);
  for (int i = 0; i < 57; ++i) next(original);  // crosses epoch boundaries (49 batches per epoch)
  const std::string saved = original.state_json();
  const LoaderState state = original.state();
  EXPECT_GT(state.epoch, 0);
  std::vector<Batch> expected;
  for (int i = 0; i < 60; ++i) expected.push_back(next(original));

  DataLoader resumed({path}, 3, 10, 1, 2, 777, true);  // the saved seed wins
  resumed.restore_json(saved);
  EXPECT_EQ(resumed.state(), state);
  for (int i = 0; i < 60; ++i) ASSERT_EQ(next(resumed), expected[i]) << "batch " << i;

  nlohmann::json j = state;
  EXPECT_EQ(j.get<LoaderState>(), state);
  EXPECT_EQ(j.at("epoch").get<int64_t>(), state.epoch);
}

TEST(DataLoader, RestoreAtAnotherWorldSizeContinuesTheSameSamples) {
  const int T = 4;
  const auto path = make_shard("reshape.bin", 64 * T + 1);
  DataLoader two_ranks({path}, 2, T, 0, 2, 11, true);  // global batch 4
  for (int i = 0; i < 3; ++i) next(two_ranks);
  DataLoader one_rank({path}, 4, T, 0, 1, 11, true);
  DataLoader reference({path}, 4, T, 0, 1, 11, true);
  for (int i = 0; i < 3; ++i) next(reference);
  one_rank.restore(two_ranks.state());
  for (int i = 0; i < 20; ++i) ASSERT_EQ(next(one_rank), next(reference));

  DataLoader three({path}, 3, T, 0, 1, 11, true);  // 12 consumed windows fit 4 batches of 3
  three.restore(two_ranks.state());
  EXPECT_EQ(three.batch_in_epoch(), 4);
  DataLoader five({path}, 5, T, 0, 1, 11, true);  // 12 is not a multiple of 5
  EXPECT_THROW(five.restore(two_ranks.state()), ds::ConfigError);
}

TEST(DataLoader, RestoreRejectsOtherData) {
  const auto a = make_shard("a.bin", 1001);
  const auto b = make_shard("b.bin", 2001);
  DataLoader la({a}, 2, 10, 0, 1, 1, true), lb({b}, 2, 10, 0, 1, 1, true), lt({a}, 2, 20, 0, 1, 1, true);
  EXPECT_THROW(lb.restore(la.state()), ds::ConfigError);
  EXPECT_THROW(lt.restore(la.state()), ds::ConfigError);
  EXPECT_THROW(la.restore_json("{\"epoch\": 1}"), ds::ConfigError);
  EXPECT_THROW(la.restore_json("not json"), ds::ConfigError);
}

TEST(DataLoader, WindowsNeverCrossShards) {
  const int T = 5;
  const auto s0 = make_shard("s0.bin", 3 * T + 1, 0);      // 3 windows
  const auto s1 = make_shard("s1.bin", 2 * T + 3, 1000);   // 2 windows, 2 tokens of tail unused
  DataLoader loader({s0, s1}, 1, T, 0, 1, 0, false);
  EXPECT_EQ(loader.num_windows(), 5);
  EXPECT_EQ(loader.num_tokens(), 3 * T + 1 + 2 * T + 3);
  const std::vector<int> starts = {0, 5, 10, 1000, 1005};
  for (const int s : starts) {
    const Batch b = next(loader);
    EXPECT_EQ(b.x[0], s);
    EXPECT_EQ(b.y[T - 1], s + T);
  }
  EXPECT_EQ(loader.epoch(), 1);
}

TEST(DataLoader, ResetStartsAnOrderedPass) {
  const auto path = make_shard("val.bin", 8 * 6 + 1);
  DataLoader val({path}, 2, 6, 0, 1, 0, false);
  ASSERT_EQ(val.num_batches(), 4);
  std::vector<Batch> first;
  for (int i = 0; i < val.num_batches(); ++i) first.push_back(next(val));
  next(val);
  val.reset();
  EXPECT_EQ(val.epoch(), 0);
  for (int i = 0; i < val.num_batches(); ++i) EXPECT_EQ(next(val), first[i]);
}

TEST(DataLoader, TooSmallShardIsAConfigError) {
  const auto path = make_shard("tiny.bin", 64);
  EXPECT_NO_THROW(DataLoader({path}, 1, 63, 0, 1, 0, false));
  try {
    DataLoader({path}, 2, 32, 0, 1, 0, false);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ds::ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("64 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("65 tokens"), std::string::npos) << msg;
  }
  EXPECT_THROW(DataLoader({path}, 1, 8, 2, 2, 0, false), ds::ConfigError);
  EXPECT_THROW(DataLoader({path + ".missing"}, 1, 8, 0, 1, 0, false), ds::IoError);
}

}  // namespace
}  // namespace ds::data
