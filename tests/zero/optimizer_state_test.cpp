// The optimizer-state store: tiles and ranged access of the resident store; and, with a store that counts its tile
// accesses, proof that the optimizer step and the checkpoint save and load reach the master weights and the Adam
// moments only through the store, one tile at a time (fp32 and bf16 mixed precision). The step's result is
// checked against Adam's first step written out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "common/scratch_dir.h"
#include "ds/comm/topology.h"
#include "ds/engine/checkpoint.h"
#include "ds/zero/zero_optimizer.h"

namespace ds::zero {
namespace {

TEST(OptimizerStateStore, ResidentTilesAndRangesAcrossThem) {
  ResidentStateStore store(10, 4, /*has_master=*/false);
  EXPECT_EQ(store.tile_count(), 3);
  EXPECT_EQ(store.tile_size(2), 2);
  EXPECT_EQ(store.kinds(), kMoments);
  std::vector<float> in(10), out(10, -1.0f);
  for (int i = 0; i < 10; ++i) in[static_cast<size_t>(i)] = float(i) + 0.5f;
  write_state(store, StateKind::exp_avg_sq, 0, 10, in.data());
  read_state(store, StateKind::exp_avg_sq, 3, 6, out.data());  // tiles 0, 1 and 2
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], in[static_cast<size_t>(i + 3)]);
  const StateTile t = store.acquire(1, mask_of(StateKind::exp_avg_sq), TileAccess::read);
  EXPECT_EQ(t.begin, 4);
  EXPECT_EQ(t.count, 4);
  EXPECT_EQ(t.data(StateKind::exp_avg), nullptr);  // not requested
  EXPECT_EQ(t.data(StateKind::exp_avg_sq)[0], 4.5f);
  store.release(t);
  ResidentStateStore whole(7, int64_t(1) << 40, /*has_master=*/true);  // sub_group_size above the partition
  EXPECT_EQ(whole.tile_count(), 1);
  EXPECT_EQ(whole.tile_size(0), 7);
}

// Counts acquisitions by (kind, access); checks that callers hold one tile at a time and release what they take.
class CountingStore final : public OptimizerStateStore {
 public:
  CountingStore(int64_t numel, int64_t tile, bool master)
      : OptimizerStateStore(numel, tile, master), inner_(numel, tile, master) {}
  StateTile acquire(int64_t t, StateMask which, TileAccess access) override {
    EXPECT_EQ(held_, 0) << "a second tile acquired before the first was released";
    ++held_;
    for (int k = 0; k < kStateKinds; ++k)
      if (which & (1u << k)) ++counts_[{StateKind(k), access}];
    return inner_.acquire(t, which, access);
  }
  void release(const StateTile& tile) override {
    --held_;
    inner_.release(tile);
  }
  int count(StateKind k, TileAccess a) const {
    auto it = counts_.find({k, a});
    return it == counts_.end() ? 0 : it->second;
  }
  int writes(StateKind k) const { return count(k, TileAccess::write) + count(k, TileAccess::read_write); }
  void reset() { counts_.clear(); }
  int held() const { return held_; }

 private:
  ResidentStateStore inner_;
  std::map<std::pair<StateKind, TileAccess>, int> counts_;
  int held_ = 0;
};

// A two-unit model (48 and 112 padded elements in one rank's partition) whose optimizer keeps its state in a
// counting store of 48-element tiles: 4 tiles.
struct Model {
  nn::ParameterStore store;
  std::unique_ptr<comm::Communicator> comm = comm::make_self_communicator();
  CountingStore* state = nullptr;
  std::unique_ptr<zero::ZeroOptimizer> opt;
  cpu::AdamParams hyper;

  explicit Model(const zero::ZeroPrecision& precision) {
    store.begin_unit("a");
    store.add("a.w", {40});
    store.begin_unit("b");
    store.add("b.w", {10, 10});
    store.materialize(zero::ZeroOptimizer::alignment(1), true, true, precision.params, precision.grads);
    config::ZeroConfig zero;
    zero.stage = 1;
    zero.sub_group_size = 48;
    hyper.lr = 0.01f;
    hyper.weight_decay = 0.1f;
    opt = std::make_unique<zero::ZeroOptimizer>(store, *comm, zero, hyper, precision,
                                          [this](int64_t numel, int64_t tile, bool master) {
                                            auto s = std::make_unique<CountingStore>(numel, tile, master);
                                            state = s.get();
                                            return s;
                                          });
  }
  static float param(int64_t i) { return 0.25f * float(i % 5) - 0.5f; }
  static float grad(int64_t i) { return 0.125f * float(i % 7) - 0.375f; }
  void set_parameters() {
    for (const nn::Parameter& p : store.all()) {
      std::vector<float> v(static_cast<size_t>(p.numel()));
      for (int64_t k = 0; k < p.numel(); ++k) v[static_cast<size_t>(k)] = param(p.offset + k);
      opt->set_parameters(p.offset, v.data(), p.numel());
    }
  }
  void train_step() {
    opt->begin_batch();
    opt->begin_micro_batch(true);
    for (const nn::Parameter& p : store.all())
      for (int64_t k = 0; k < p.numel(); ++k) {
        const float g = grad(p.offset + k);
        cpu::from_f32(static_cast<std::byte*>(store.flat_grads().raw()) +
                          (p.offset + k) * int64_t(dtype_size(store.flat_grads().dtype())),
                      &g, store.flat_grads().dtype(), 1);
      }
    opt->end_micro_batch(true);
    opt->step(hyper.lr, 1.0f);
  }
};

TEST(OptimizerStateStore, TheStepReachesTheStateTileByTile) {
  for (const zero::ZeroPrecision precision : {zero::ZeroPrecision{}, zero::ZeroPrecision{DType::bf16, DType::bf16}}) {
    Model m(precision);
    ASSERT_NE(m.state, nullptr);
    ASSERT_EQ(m.state->tile_count(), 4);
    m.set_parameters();
    m.state->reset();
    m.train_step();
    const char* what = precision.mixed() ? "bf16" : "fp32";
    EXPECT_EQ(m.state->count(StateKind::exp_avg, TileAccess::read_write), 4) << what;
    EXPECT_EQ(m.state->count(StateKind::exp_avg_sq, TileAccess::read_write), 4) << what;
    EXPECT_EQ(m.state->count(StateKind::master, TileAccess::read_write), precision.mixed() ? 4 : 0) << what;
    EXPECT_EQ(m.state->held(), 0);
    // Adam's first step: m = (1-b1) g, v = (1-b2) g^2; bias-corrected m/sqrt(v) = sign(g) (up to eps), so
    // p' = p - lr wd p - lr g / (|g| + eps).
    const std::vector<float> params = m.opt->full_parameters();
    std::vector<float> exp_avg(160);
    read_state(*m.state, StateKind::exp_avg, 0, 160, exp_avg.data());
    size_t at = 0;  // full_parameters() is unpadded, in declaration order
    for (const nn::Parameter& p : m.store.all()) {
      for (int64_t k = 0; k < p.numel(); ++k, ++at) {
        const int64_t i = p.offset + k;
        const double g = Model::grad(i), p0 = Model::param(i), lr = m.hyper.lr;
        const double want = p0 - lr * m.hyper.weight_decay * p0 - lr * g / (std::fabs(g) + m.hyper.eps);
        EXPECT_NEAR(exp_avg[static_cast<size_t>(i)], (1 - m.hyper.beta1) * g, 1e-7) << what << " element " << i;
        EXPECT_NEAR(params[at], want, 1e-6) << what << " element " << i;
      }
    }
  }
}

class OptimizerStateCheckpoint : public test::ScratchDirTest {};

TEST_F(OptimizerStateCheckpoint, SaveAndLoadGoThroughTheStore) {
  for (const zero::ZeroPrecision precision : {zero::ZeroPrecision{}, zero::ZeroPrecision{DType::bf16, DType::bf16}}) {
    const char* what = precision.mixed() ? "bf16" : "fp32";
    Model saved(precision);
    saved.set_parameters();
    saved.train_step();
    saved.state->reset();
    ckpt::CheckpointManifest meta;
    meta.model = {{"test", what}};
    comm::Topology topology(*saved.comm, comm::TopologyShape{1, 1, 1});
    engine::write_checkpoint(topology, dir_.string(), what, {{&saved.store, saved.opt.get(), false}}, meta);
    EXPECT_EQ(saved.state->count(StateKind::exp_avg, TileAccess::read), 4) << what;
    EXPECT_EQ(saved.state->count(StateKind::exp_avg_sq, TileAccess::read), 4) << what;
    EXPECT_EQ(saved.state->count(StateKind::master, TileAccess::read), precision.mixed() ? 4 : 0) << what;

    Model loaded(precision);
    loaded.state->reset();
    engine::load_checkpoint(dir_.string(), what, {{&loaded.store, loaded.opt.get(), false}});
    EXPECT_EQ(loaded.state->count(StateKind::exp_avg, TileAccess::write), 4) << what;
    EXPECT_EQ(loaded.state->count(StateKind::exp_avg_sq, TileAccess::write), 4) << what;
    EXPECT_EQ(loaded.state->writes(StateKind::master) > 0, precision.mixed()) << what;
    EXPECT_EQ(loaded.state->held(), 0);
    for (StateKind k : {StateKind::exp_avg, StateKind::exp_avg_sq}) {
      std::vector<float> a(160), b(160);
      read_state(*saved.state, k, 0, 160, a.data());
      read_state(*loaded.state, k, 0, 160, b.data());
      EXPECT_EQ(a, b) << what << " " << state_name(k);
    }
    EXPECT_EQ(loaded.opt->full_parameters(), saved.opt->full_parameters()) << what;
    EXPECT_EQ(loaded.opt->step_count(), 1) << what;
  }
}

}  // namespace
}  // namespace ds::zero
