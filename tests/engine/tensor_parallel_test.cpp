// Tensor parallelism (Megatron) on the local (thread) backend against the single-process run of the same model,
// data and initial weights: per-step losses and final parameters within 1e-5 (relative) over 20 steps, for
// (tp, dp) = (2, 1), (4, 1), (2, 2) and every ZeRO stage over the data group; with activation checkpointing; and
// the tensor-parallel traffic against Megatron's formula.
#include <gtest/gtest.h>

#include <cmath>

#include "common/local_ranks.h"
#include "common/scratch_dir.h"
#include "common/zero_case.h"
#include "ds/ckpt/checkpoint_format.h"

using namespace ds;
using namespace ds::zero_case;

namespace {

std::string tp_block(int tp) { return fmt::format(R"(, "tensor_parallel": {{"autotp_size": {}}})", tp); }

std::vector<RunResult> run_layout(int tp, int dp, int stage, int gas = 1, const std::string& extra = "") {
  const int micro = kGlobalRows / dp / gas;
  return ds::testing::on_local_ranks<RunResult>(tp * dp, [&](comm::Communicator& comm) {
    return run_case(comm, stage, micro, gas, false, extra, tp_block(tp));
  });
}

const RunResult& reference() {
  static RunResult r =
      ds::testing::on_local_ranks<RunResult>(1, [](comm::Communicator& c) { return run_case(c, 0, kGlobalRows, 1, false); })[0];
  return r;
}

class TensorParallel : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

}  // namespace

// Megatron's tensor-parallel traffic per micro-batch, in bytes sent by one rank: each of L blocks all-reduces b·s·h
// fp32 elements twice in forward and twice in backward (three times in forward when checkpointed: the recomputation
// all-reduces again); the vocabulary-parallel embedding once and the head's input gradient once; and the
// cross-entropy 3 floats per token. A ring all-reduce of n bytes sends 2n(t-1)/t (Note [Traffic accounting]).
double megatron_bytes(int tp, int micro, bool checkpointed) {
  const nn::Gpt2Config c = tiny();
  const double bs = double(micro) * kT, bsh = bs * c.n_embd;
  const double elements = ((checkpointed ? 6 : 4) * c.n_layer + 2) * bsh + 3 * bs;
  return elements * 4 * 2.0 * (tp - 1) / tp;
}

// Model-state bytes of one rank: its share Ψ_r of the model (split parameters 1/t of the whole, replicated ones
// whole) under ZeRO's formula over the data-parallel size N, fp32 Adam.
double state_formula(double psi_r, int stage, int n) {
  return stage == 0   ? 16 * psi_r
         : stage == 1 ? 8 * psi_r + 8 * psi_r / n
         : stage == 2 ? 4 * psi_r + 12 * psi_r / n
                      : 16 * psi_r / n;
}

TEST_P(TensorParallel, FollowsTheSingleProcessRunAtTheFormulasMemoryAndTraffic) {
  const auto [tp, dp, stage] = GetParam();
  const auto results = run_layout(tp, dp, stage);
  const nn::Gpt2Config c = tiny();
  // The share: the blocks' matrices and split biases over t, the vocabulary rows over t (rounded up), the rest whole.
  const double C = c.n_embd, L = c.n_layer;
  // Per block: QKV and FC weights and biases split (12C² + 7C), the LayerNorms and output-projection biases not (6C).
  const double split = L * (12 * C * C + 7 * C), replicated = L * 6 * C + 2 * C + double(c.block_size) * C;
  for (size_t r = 0; r < results.size(); ++r) {
    const std::string what = fmt::format("tp {} dp {} stage {} rank {}", tp, dp, stage, r);
    expect_same_trajectory(results[r], reference(), what);
    const int model_rank = static_cast<int>(r) % tp;
    const double vocab_rows = std::min<double>(c.vocab_size, (model_rank + 1) * std::ceil(double(c.vocab_size) / tp)) -
                              std::min<double>(c.vocab_size, model_rank * std::ceil(double(c.vocab_size) / tp));
    const double psi_r = split / tp + replicated + vocab_rows * C;
    EXPECT_EQ(results[r].psi_local, static_cast<int64_t>(psi_r)) << what;
    const double states = double(results[r].peak_param + results[r].peak_grad + results[r].peak_optimizer);
    const double want = state_formula(psi_r, stage, dp);
    EXPECT_NEAR(states, want, 0.05 * want) << what;
    const double tp_want = megatron_bytes(tp, kGlobalRows / dp, false);
    EXPECT_NEAR(double(results[r].model_bytes_per_step), tp_want, 1e-3 * tp_want) << what;
    if (dp > 1) {  // ZeRO's 2Ψ (3Ψ at stage 3) over the data group, of this rank's share
      const double dp_want = (stage == 3 ? 3.0 : 2.0) * psi_r * 4 * (dp - 1) / dp;
      EXPECT_NEAR(double(results[r].bytes_per_step - results[r].model_bytes_per_step), dp_want, 0.05 * dp_want)
          << what;
    }
  }
  for (const RunResult& r : results) EXPECT_EQ(r.params, results[0].params);  // every rank sees the same model
}

INSTANTIATE_TEST_SUITE_P(Layouts, TensorParallel,
                         ::testing::Values(std::make_tuple(2, 1, 0), std::make_tuple(4, 1, 0),
                                           std::make_tuple(2, 1, 2), std::make_tuple(2, 2, 0),
                                           std::make_tuple(2, 2, 1), std::make_tuple(2, 2, 2),
                                           std::make_tuple(2, 2, 3)),
                         [](const auto& info) {
                           return fmt::format("tp{}_dp{}_stage{}", std::get<0>(info.param), std::get<1>(info.param),
                                              std::get<2>(info.param));
                         });

// Checkpointed blocks recompute their forward in backward (two more all-reduces each) and the run is unchanged;
// gradient accumulation runs the micro-batches through the same splits.
TEST(TensorParallelRun, ActivationCheckpointingAndAccumulationKeepTheTrajectory) {
  const auto checkpointed = ds::testing::on_local_ranks<RunResult>(2, [&](comm::Communicator& comm) {
    return run_case(comm, 1, kGlobalRows, 1, false, "", tp_block(2) + R"(, "activation_checkpointing": {})",
                    /*checkpoint_activations=*/true);
  });
  expect_same_trajectory(checkpointed[0], reference(), "tp 2 with activation checkpointing");
  EXPECT_NEAR(double(checkpointed[0].model_bytes_per_step), megatron_bytes(2, kGlobalRows, true),
              1e-3 * megatron_bytes(2, kGlobalRows, true));
  const auto accumulated = run_layout(2, 2, 2, /*gas=*/2);
  expect_same_trajectory(accumulated[3], reference(), "tp 2 dp 2 stage 2 with 2 micro-batches");
  EXPECT_NEAR(double(accumulated[3].model_bytes_per_step), 2 * megatron_bytes(2, 1, false),
              2e-3 * megatron_bytes(2, 1, false));
}

namespace {

// Steps [first, last) at (tp, dp = world / tp) and `stage`, resuming from `load` and saving to `save` when given.
std::vector<Segment> run_segment(int world, int tp, int stage, int first, int last, const std::string& load,
                                 const std::string& save) {
  const int micro = kGlobalRows / (world / tp);
  return ds::testing::on_local_ranks<Segment>(world, [&](comm::Communicator& comm) {
    return zero_case::run_segment(comm, config_json(stage, micro, 1, false, "", tp_block(tp)), micro, 1, first,
                                  last, load, save);
  });
}

class TensorParallelCheckpoint : public test::ScratchDirTest {};

}  // namespace

// A checkpoint written at (tp 2, dp 2, ZeRO-1) resumes at (1, 1, stage 0), whose checkpoint resumes at (tp 4, dp 1,
// ZeRO-2): the 20 steps stay within 1e-5 of the uninterrupted single-process run. Consolidation gives the same
// file from either layout's checkpoint of the same weights.
TEST_F(TensorParallelCheckpoint, MovesBetweenLayoutsOnTheUninterruptedCurve) {
  const std::string a = path("a"), b = path("b");
  const Segment first = run_segment(4, 2, 1, 0, 7, "", a)[0];
  const Segment second = run_segment(1, 1, 0, 7, 14, a, b)[0];
  const Segment third = run_segment(4, 4, 2, 14, kSteps, b, "")[2];
  expect_same_trajectory(joined({&first, &second, &third}), reference(),
                         "(tp 2, dp 2, stage 1) -> (1, 1, stage 0) -> (tp 4, dp 1, stage 2)");

  // The tensor-parallel checkpoint consolidates to the weights the run held, in declaration order.
  const ckpt::CheckpointReader reader(a, "");
  EXPECT_EQ(reader.manifest().tp, 2);
  EXPECT_EQ(reader.manifest().world, 2);
  EXPECT_EQ(reader.manifest().layouts.size(), 2u);
  EXPECT_EQ(consolidated_values(reader, path("a.safetensors")), first.params);
  // Resuming a checkpoint and saving it again at another layout, untrained, gives the same consolidated file.
  const std::string c = path("c");
  run_segment(2, 2, 3, 7, 7, a, c);
  ckpt::consolidate_checkpoint(ckpt::CheckpointReader(c, ""), path("c.safetensors"), "fp32");
  EXPECT_EQ(read_bytes(path("a.safetensors")), read_bytes(path("c.safetensors")));
}

// Checkpoints written before the parallel layout (manifest version 1: one layout at the top level) still load.
TEST_F(TensorParallelCheckpoint, AVersionOneManifestStillLoads) {
  const std::string a = path("a");
  const Segment saved = run_segment(2, 1, 2, 0, 3, "", a)[0];
  const std::string manifest = a + "/global_step3/manifest.json";
  nlohmann::json j = nlohmann::json::parse(read_bytes(manifest));
  nlohmann::json layout = j["layouts"][0];
  j["version"] = 1;
  j["units"] = layout["units"];
  j["params"] = layout["params"];
  j["shards"] = layout["shards"];
  j.erase("layouts");
  j.erase("parallel");
  write_bytes(manifest, j.dump(1));
  const Segment loaded = run_segment(1, 1, 0, 3, 3, a, "")[0];
  EXPECT_EQ(loaded.params, saved.params);
}

// LAMB's trust ratio is one per whole parameter, which a tensor-parallel rank does not hold: refused by name.
TEST(TensorParallelRun, LambIsAClearError) {
  const std::string json = R"({"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}},
                               "tensor_parallel": {"autotp_size": 2}})";
  comm::run_local_world(2, [&](comm::Communicator& comm) {
    const config::DeepSpeedConfig cfg = config::parse_config(json, comm.size(), "lamb_tp");
    try {
      engine::Engine engine(tiny(), cfg, kT, &comm, 1);
      ADD_FAILURE() << "LAMB with tensor parallelism was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("LAMB"), std::string::npos) << e.what();
    }
  });
}
