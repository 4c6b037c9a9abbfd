// The partition layout against hand-computed cases (chunks, owned flat ranges, partition offsets, both range walks),
// and a property check over many sizes: across the ranks the owned pieces cover every element of every unit
// exactly once, and each rank's pieces tile its partition in order.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <tuple>
#include <vector>

#include "ds/nn/module.h"
#include "ds/zero/partition_layout.h"

namespace ds::zero {
namespace {

// Units of these padded sizes, contiguous from 0 (numel is the padded size minus one, for the record).
std::vector<nn::ParamUnit> units_of(const std::vector<int64_t>& padded) {
  std::vector<nn::ParamUnit> units;
  int64_t offset = 0;
  for (size_t i = 0; i < padded.size(); ++i) {
    nn::ParamUnit u;
    u.name = fmt::format("u{}", i);
    u.offset = offset;
    u.padded_numel = padded[i];
    u.numel = padded[i] - 1;
    units.push_back(u);
    offset += padded[i];
  }
  return units;
}

using Piece = std::tuple<int64_t, int64_t, int64_t>;  // (flat or unit, part, count)

std::vector<Piece> owned(const PartitionLayout& l, int64_t begin, int64_t end) {
  std::vector<Piece> out;
  l.for_owned(begin, end, [&](int64_t flat, int64_t part, int64_t count) { out.emplace_back(flat, part, count); });
  return out;
}

std::vector<Piece> partition(const PartitionLayout& l, int64_t begin, int64_t end) {
  std::vector<Piece> out;
  l.for_partition(begin, end, [&](size_t unit, int64_t part, int64_t count) {
    out.emplace_back(static_cast<int64_t>(unit), part, count);
  });
  return out;
}

TEST(PartitionLayout, ChunksOffsetsAndSizesByHand) {
  const auto units = units_of({8, 4, 12});  // flat [0, 8) [8, 12) [12, 24)
  const PartitionLayout l(units, /*rank=*/1, /*world=*/4, /*replicated=*/false);
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].chunk, 2);
  EXPECT_EQ(l[1].chunk, 1);
  EXPECT_EQ(l[2].chunk, 3);
  EXPECT_EQ(l[0].own, 2);   // rank 1's chunk of [0, 8): [2, 4)
  EXPECT_EQ(l[1].own, 9);   // of [8, 12): [9, 10)
  EXPECT_EQ(l[2].own, 15);  // of [12, 24): [15, 18)
  EXPECT_EQ(l[0].part_offset, 0);
  EXPECT_EQ(l[1].part_offset, 2);
  EXPECT_EQ(l[2].part_offset, 3);
  EXPECT_EQ(l.partition_numel(), 6);
  EXPECT_EQ(l.padded_numel(), 24);
  EXPECT_EQ(l.max_chunk(), 3);
  EXPECT_EQ(l.largest_unit(), 12);
  EXPECT_EQ(PartitionLayout::alignment(4), 64);
}

TEST(PartitionLayout, OwnedPiecesOfFlatRangesByHand) {
  const PartitionLayout l(units_of({8, 4, 12}), 1, 4, false);
  EXPECT_EQ(owned(l, 0, 24), (std::vector<Piece>{{2, 0, 2}, {9, 2, 1}, {15, 3, 3}}));
  EXPECT_EQ(owned(l, 3, 16), (std::vector<Piece>{{3, 1, 1}, {9, 2, 1}, {15, 3, 1}}));
  EXPECT_EQ(owned(l, 10, 15), std::vector<Piece>{});  // between rank 1's chunks
  EXPECT_EQ(owned(l, 17, 100), (std::vector<Piece>{{17, 5, 1}}));
  const PartitionLayout last(units_of({8, 4, 12}), 3, 4, false);
  EXPECT_EQ(owned(last, 0, 24), (std::vector<Piece>{{6, 0, 2}, {11, 2, 1}, {21, 3, 3}}));
}

TEST(PartitionLayout, PartitionRangesByHand) {
  const PartitionLayout l(units_of({8, 4, 12}), 1, 4, false);
  EXPECT_EQ(partition(l, 0, 6), (std::vector<Piece>{{0, 0, 2}, {1, 2, 1}, {2, 3, 3}}));
  EXPECT_EQ(partition(l, 1, 5), (std::vector<Piece>{{0, 1, 1}, {1, 2, 1}, {2, 3, 2}}));
  EXPECT_EQ(partition(l, 3, 4), (std::vector<Piece>{{2, 3, 1}}));
  EXPECT_EQ(partition(l, 6, 9), std::vector<Piece>{});
}

TEST(PartitionLayout, ReplicatedOwnsEverything) {
  const PartitionLayout l(units_of({8, 4, 12}), 1, 4, /*replicated=*/true);
  EXPECT_EQ(l[1].chunk, 4);
  EXPECT_EQ(l[1].own, 8);
  EXPECT_EQ(l[2].part_offset, 12);
  EXPECT_EQ(l.partition_numel(), 24);
  EXPECT_EQ(owned(l, 5, 14), (std::vector<Piece>{{5, 5, 3}, {8, 8, 4}, {12, 12, 2}}));
}

TEST(PartitionLayout, UnitsOfAMaterializedStoreAndTheirOwners) {
  struct Dummy final : nn::Module {
    explicit Dummy(const char* n) : nn::Module(n) {}
    void collect_parameters(std::vector<nn::Parameter*>&) const override {}
  };
  Dummy a("a"), b("b");
  nn::ParameterStore store;
  store.begin_unit("a", &a);
  store.add("a.w", {5, 3});
  store.begin_unit("b", &b);
  store.add("b.w", {7});
  store.materialize(PartitionLayout::alignment(2), false, false);
  const PartitionLayout l(store.units(), 0, 2, false);
  EXPECT_EQ(l.index_of(a), 0u);
  EXPECT_EQ(l.index_of(b), 1u);
  EXPECT_EQ(l[0].padded, 32);  // 15 elements padded to 16 x 2
  EXPECT_EQ(l[1].offset, 32);
  EXPECT_EQ(l[1].chunk, 16);
}

// Every element of every unit is owned by exactly one rank, and a rank's pieces fill its partition in order.
TEST(PartitionLayout, OwnedPiecesCoverEveryElementOnce) {
  for (int world : {1, 2, 3, 4, 7}) {
    const std::vector<int64_t> padded = {int64_t(world) * 3, int64_t(world) * 1, int64_t(world) * 10,
                                         int64_t(world) * 2};
    const auto units = units_of(padded);
    int64_t total = 0;
    for (int64_t p : padded) total += p;
    std::map<int64_t, int> owner_count;
    for (int r = 0; r < world; ++r) {
      const PartitionLayout l(units, r, world, false);
      int64_t next_part = 0;
      for (const auto& [flat, part, count] : owned(l, 0, total)) {
        EXPECT_EQ(part, next_part) << "world " << world << " rank " << r;
        next_part += count;
        for (int64_t k = 0; k < count; ++k) ++owner_count[flat + k];
      }
      EXPECT_EQ(next_part, l.partition_numel());
      EXPECT_EQ(l.partition_numel() * world, total);
      // Any sub-range gives the same pieces, clipped.
      for (const auto& [flat, part, count] : owned(l, 5, total - 3)) {
        EXPECT_GE(flat, 5);
        EXPECT_LE(flat + count, total - 3);
      }
    }
    ASSERT_EQ(static_cast<int64_t>(owner_count.size()), total) << "world " << world;
    for (const auto& [flat, n] : owner_count) EXPECT_EQ(n, 1) << "element " << flat << " world " << world;
  }
}

}  // namespace
}  // namespace ds::zero
