// MoE training on the local (thread) backend against the single-process run of the same model, data and initial
// weights: per-step losses and final parameters within 1e-5 over 20 steps at expert-parallel sizes 1, 2 and 4 over
// 4 data-parallel ranks, at ZeRO 0, 1 and 2; top-1 with drops, top-2, dropless and residual MoE; the all-to-all
// traffic against the formula from the routed counts; the routing statistics; and checkpoints moved between
// expert-parallel sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "common/local_ranks.h"
#include "common/moe_case.h"
#include "common/scratch_dir.h"

using namespace ds;
using namespace ds::moe_case;

namespace {

std::vector<MoeRun> run_layout(const nn::Gpt2Config& model, int dp, int stage, const std::string& extra = "") {
  const int gas = zero_case::kGlobalRows / dp;
  return ds::testing::on_local_ranks<MoeRun>(
      dp, [&](comm::Communicator& comm) { return run_moe(comm, model, stage, gas, extra); });
}

// The single-process run of a model (one per model, shared by the tests).
const MoeRun& reference(const nn::Gpt2Config& model) {
  static std::map<std::string, MoeRun> runs;
  const std::string key = model.to_json().dump();
  auto it = runs.find(key);
  if (it == runs.end()) it = runs.emplace(key, run_layout(model, 1, 0)[0]).first;
  return it->second;
}

nn::Gpt2Config with_ep(nn::Gpt2Config c, int ep) {
  c.moe.ep_size = ep;
  return c;
}

struct Case {
  const char* name;
  int k;
  bool dropless, residual;
};

class MoeEquivalence : public ::testing::TestWithParam<std::tuple<int, int>> {};

}  // namespace

TEST_P(MoeEquivalence, ExpertParallelRunsFollowTheSingleProcessRun) {
  const auto [ep, stage] = GetParam();
  for (const Case c : {Case{"top-1", 1, false, false}, Case{"top-2 dropless", 2, true, false}}) {
    const nn::Gpt2Config model = tiny_moe(c.k, c.dropless, 1, c.residual);
    const MoeRun& ref = reference(model);
    const auto results = run_layout(with_ep(model, ep), 4, stage);
    for (const MoeRun& r : results) {
      zero_case::expect_same_trajectory(r.run, ref.run, fmt::format("{} ep {} stage {}", c.name, ep, stage));
      EXPECT_EQ(r.ep, ep);
      // Each rank holds E/ep experts of each of the two MoE blocks.
      const int64_t expert = 2 * 4 * int64_t(model.n_embd) * model.n_embd + 5 * model.n_embd;
      EXPECT_EQ(r.expert_param_numel, 2 * (4 / ep) * expert);
      // The all-to-all traffic of the last step (one pass per rank) against the formula.
      EXPECT_EQ(r.a2a_bytes_last_step, ep == 1 ? 0 : a2a_formula(model, r, 1)) << c.name << " rank " << r.ep_rank;
    }
    // The statistics are those of the whole batch: the same on every rank, and the reference's.
    const engine::StepResult& got = results[0].steps.back();
    const engine::StepResult& want = ref.steps.back();
    EXPECT_NEAR(got.moe_aux_loss, want.moe_aux_loss, 1e-4 * want.moe_aux_loss);
    EXPECT_DOUBLE_EQ(got.moe_dropped, want.moe_dropped);
    EXPECT_DOUBLE_EQ(got.moe_tokens_max, want.moe_tokens_max);
    EXPECT_DOUBLE_EQ(got.moe_tokens_mean, 4.0 * kT * c.k / 4);  // 4 passes of kT tokens, k choices, 4 experts
    if (c.dropless) {
      EXPECT_EQ(got.moe_dropped, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, MoeEquivalence,
                         ::testing::Values(std::make_tuple(1, 0), std::make_tuple(2, 0), std::make_tuple(4, 0),
                                           std::make_tuple(2, 1), std::make_tuple(2, 2), std::make_tuple(4, 2),
                                           std::make_tuple(1, 2)),
                         [](const auto& info) {
                           return fmt::format("ep{}_stage{}", std::get<0>(info.param), std::get<1>(info.param));
                         });

TEST(Moe, ResidualMoeAndTopTwoWithDropsFollowTheSingleProcessRun) {
  for (const auto& [k, residual] : {std::pair{2, false}, std::pair{1, true}}) {
    const nn::Gpt2Config model = tiny_moe(k, false, 1, residual);
    for (const MoeRun& r : run_layout(with_ep(model, 2), 2, 1))
      zero_case::expect_same_trajectory(r.run, reference(model).run, fmt::format("k {} residual {}", k, residual));
  }
}

TEST(Moe, ActivationCheckpointingRecomputesTheSameRoutingAndCountsItOnce) {
  // A checkpointed block's forward runs again in backward (its all-to-alls too): the same gradients, and the
  // routing statistics of the first forward only.
  const nn::Gpt2Config model = tiny_moe(1, false, 1);
  const auto results = ds::testing::on_local_ranks<MoeRun>(2, [&](comm::Communicator& comm) {
    return run_moe(comm, with_ep(model, 2), 2, 2, "", 0, zero_case::kSteps, "", "", "", true);
  });
  for (const MoeRun& r : results) {
    zero_case::expect_same_trajectory(r.run, reference(model).run, "ep 2, checkpointed");
    EXPECT_EQ(r.steps.back().moe_tokens_mean, reference(model).steps.back().moe_tokens_mean);
    // The recomputed forward's two all-to-alls per MoE block and pass come on top of the formula's four.
    EXPECT_EQ(r.a2a_bytes_last_step, a2a_formula(model, r, 2) * 6 / 4);
  }
}

TEST(Moe, MixedPrecisionTrainsAtExpertParallelSizeTwo) {
  // bf16 parameters and gradients for the dense model and the experts (ZeRO-2 over their groups): the run stays
  // finite, learns as the fp32 one does to bf16's precision, and both optimizers hold 16-bit parameters.
  const nn::Gpt2Config model = tiny_moe(2, true, 2);
  const auto results = ds::testing::on_local_ranks<MoeRun>(2, [&](comm::Communicator& comm) {
    return run_moe(comm, model, 2, 2, "", 0, zero_case::kSteps, "", "", R"(, "bf16": {"enabled": true})");
  });
  const MoeRun& fp32 = reference(tiny_moe(2, true, 1));
  for (const MoeRun& r : results) {
    for (size_t i = 0; i < r.run.losses.size(); ++i) {
      EXPECT_TRUE(std::isfinite(r.run.losses[i]));
      EXPECT_NEAR(r.run.losses[i], fp32.run.losses[i], 0.02 * fp32.run.losses[i]) << "step " << i;
    }
  }
}

TEST(Moe, TopOneDropsTokensAtCapacityFactorOne) {
  const MoeRun& r = reference(tiny_moe(1, false, 1));
  // 16 tokens over 4 experts at capacity max(ceil(16/4), 4) = 4: a random router overfills some experts.
  double dropped = 0;
  for (const engine::StepResult& s : r.steps) dropped += s.moe_dropped;
  EXPECT_GT(dropped, 0.0);
  EXPECT_GT(r.steps.back().moe_aux_loss, 0.0);
  EXPECT_GE(r.steps.back().moe_tokens_max, r.steps.back().moe_tokens_mean);
  EXPECT_LE(r.steps.back().moe_tokens_min, r.steps.back().moe_tokens_mean);
}

class MoeCheckpoint : public ds::test::ScratchDirTest {};

TEST_F(MoeCheckpoint, MovesBetweenExpertParallelSizesAndConsolidatesByExpert) {
  // 7 steps at dp 4 / ep 2 / ZeRO-2, 7 at dp 4 / ep 4 / ZeRO-1, the last 6 in one process: the uninterrupted
  // single-process run's losses and parameters.
  const nn::Gpt2Config model = tiny_moe(1, false, 1);
  const std::string a = path("a"), b = path("b");
  auto part = [&](int dp, int ep, int stage, int first, int last, const std::string& load, const std::string& save) {
    return ds::testing::on_local_ranks<MoeRun>(dp, [&](comm::Communicator& comm) {
      return run_moe(comm, with_ep(model, ep), stage, zero_case::kGlobalRows / dp, "", first, last, load, save);
    })[0];
  };
  const MoeRun one = part(4, 2, 2, 0, 7, "", a);
  const MoeRun two = part(4, 4, 1, 7, 14, a, b);
  const MoeRun three = part(1, 1, 0, 14, zero_case::kSteps, b, "");
  zero_case::RunResult joined;
  for (const MoeRun* r : {&one, &two, &three}) joined.losses.insert(joined.losses.end(), r->run.losses.begin(),
                                                                    r->run.losses.end());
  joined.params = three.run.params;
  zero_case::expect_same_trajectory(joined, reference(model).run, "ep 2 -> ep 4 -> one process");
  // The manifest has one expert layout per expert-parallel rank; consolidation names every expert.
  const ckpt::CheckpointReader reader(b, "");
  EXPECT_EQ(reader.manifest().ep, 4);
  int expert_layouts = 0;
  for (const ckpt::CheckpointLayout& l : reader.manifest().layouts) expert_layouts += l.ep_rank >= 0;
  EXPECT_EQ(expert_layouts, 4);
  // The consolidated file holds every parameter by name (the reader lists the experts layout by layout; the
  // engine's full_parameters() in the weight spec's order).
  const std::vector<float> values = zero_case::consolidated_values(reader, path("model.safetensors"));
  std::map<std::string, std::vector<float>> saved, trained;
  size_t at = 0;
  for (const ckpt::CheckpointParam& p : reader.params()) {
    saved[p.name].assign(values.begin() + long(at), values.begin() + long(at + p.full_numel()));
    at += p.full_numel();
  }
  at = 0;
  for (const nn::Gpt2Weight& w : model.weight_spec()) {
    trained[w.name].assign(two.run.params.begin() + long(at), two.run.params.begin() + long(at + w.numel()));
    at += w.numel();
  }
  EXPECT_EQ(saved.size(), model.weight_spec().size());
  EXPECT_TRUE(saved == trained);
  EXPECT_NO_THROW(reader.param("transformer.h.3.mlp.experts.3.c_proj.bias"));
  EXPECT_NO_THROW(reader.param("transformer.h.1.mlp.gate.weight"));
}

TEST(Moe, ZeroThreeAndPipelinesAreClearErrors) {
  const nn::Gpt2Config model = tiny_moe(1, false, 1);
  auto build = [&](const std::string& json, int world) {
    const config::DeepSpeedConfig cfg = config::parse_config(json, world, "moe errors");
    engine::Engine engine(model, cfg, kT);
  };
  try {
    build(zero_case::config_json(3, 1, 1, false), 1);
    ADD_FAILURE() << "stage 3 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ZeRO-3 does not support MoE"), std::string::npos) << e.what();
  }
  nn::Gpt2Config odd = model;
  odd.moe.num_experts = {3};
  odd.moe.ep_size = 2;
  EXPECT_THROW(odd.validate(), ConfigError);
}
