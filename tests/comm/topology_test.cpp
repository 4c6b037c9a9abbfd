// The 3D topology: DeepSpeed's PipeModelDataParallelTopology rank order (axes pipe, data, model; model fastest) and
// the members of each group, checked against the groups DeepSpeed's grid builds for 2 x 2 x 2 on eight ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>

#include "ds/comm/local/local_comm.h"
#include "ds/comm/topology.h"
#include "ds/core/error.h"

using namespace ds;
using comm::Coords;
using comm::TopologyShape;

TEST(Topology, RanksFollowDeepSpeedsAxisOrder) {
  const TopologyShape s{2, 2, 2};  // pipe, data, model
  EXPECT_EQ(s.world(), 8);
  // PipeModelDataParallelTopology(num_pp=2, num_mp=2, num_dp=2): rank = (pipe * dp + data) * mp + model.
  EXPECT_EQ(s.coords_of(0), (Coords{0, 0, 0}));
  EXPECT_EQ(s.coords_of(1), (Coords{0, 0, 1}));
  EXPECT_EQ(s.coords_of(2), (Coords{0, 1, 0}));
  EXPECT_EQ(s.coords_of(5), (Coords{1, 0, 1}));
  EXPECT_EQ(s.coords_of(7), (Coords{1, 1, 1}));
  for (int r = 0; r < 8; ++r) EXPECT_EQ(s.rank_of(s.coords_of(r)), r);
  const TopologyShape odd{3, 1, 2};
  for (int r = 0; r < odd.world(); ++r) EXPECT_EQ(odd.rank_of(odd.coords_of(r)), r);
  EXPECT_EQ(odd.coords_of(5), (Coords{2, 0, 1}));
}

// Each rank gathers the global ranks of its groups' members, in group-rank order.
TEST(Topology, GroupsHoldTheRanksDeepSpeedsGridPuts) {
  std::vector<std::vector<int>> data(8), model(8), pipe(8), mp(8);
  comm::run_local_world(8, [&](comm::Communicator& world) {
    comm::Topology topo(world, TopologyShape{2, 2, 2});
    const int me = world.rank();
    EXPECT_EQ(topo.coords(), topo.shape().coords_of(me));
    auto members = [&](comm::Communicator& g) {
      std::vector<int> all(static_cast<size_t>(g.size()));
      g.all_gather(&me, all.data(), 1, DType::i32);
      return all;
    };
    data[me] = members(topo.data());
    model[me] = members(topo.model());
    pipe[me] = members(topo.pipe());
    mp[me] = members(topo.model_parallel());
  });
  // DeepSpeed's PipelineParallelGrid for this topology: dp groups [0,2] [1,3] [4,6] [5,7]; model (tensor) groups
  // [0,1] [2,3] [4,5] [6,7]; pipe groups [0,4] [1,5] [2,6] [3,7]; model-parallel (one replica) [0,1,4,5] [2,3,6,7].
  EXPECT_EQ(data[0], (std::vector<int>{0, 2}));
  EXPECT_EQ(data[5], (std::vector<int>{5, 7}));
  EXPECT_EQ(model[2], (std::vector<int>{2, 3}));
  EXPECT_EQ(model[7], (std::vector<int>{6, 7}));
  EXPECT_EQ(pipe[1], (std::vector<int>{1, 5}));
  EXPECT_EQ(pipe[6], (std::vector<int>{2, 6}));
  EXPECT_EQ(mp[0], (std::vector<int>{0, 1, 4, 5}));
  EXPECT_EQ(mp[7], (std::vector<int>{2, 3, 6, 7}));
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(data[r].size(), 2u);
    EXPECT_NE(std::find(data[r].begin(), data[r].end(), r), data[r].end());
    EXPECT_NE(std::find(model[r].begin(), model[r].end(), r), model[r].end());
  }
}

TEST(Topology, AGroupOfEveryRankIsTheWorldAndAGroupOfOneNeedsNoPeers) {
  comm::run_local_world(2, [&](comm::Communicator& world) {
    comm::Topology topo(world, TopologyShape{1, 2, 1});
    EXPECT_EQ(&topo.data(), &world);
    EXPECT_EQ(topo.model().size(), 1);
    EXPECT_EQ(topo.pipe().size(), 1);
    float x = 1.0f;
    topo.model().all_reduce(&x, 1, DType::f32);
    EXPECT_EQ(x, 1.0f);
  });
  comm::run_local_world(2, [&](comm::Communicator& world) {
    EXPECT_THROW(comm::Topology(world, TopologyShape{1, 1, 1}), ConfigError);
  });
}
