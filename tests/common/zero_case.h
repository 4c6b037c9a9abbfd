// The ZeRO equivalence case shared by tests/engine/zero_equivalence_test.cpp (thread backend) and
// tests/comm_mpi/zero_mpi_test.cpp (MPI): the tiny GPT-2 for 20 steps at a global batch of 4 sequences, its data,
// its config, one rank's run, and the checks against the single-process run and the ZeRO formulas.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ds/ckpt/checkpoint_format.h"
#include "ds/core/rng.h"
#include "ds/engine/engine.h"

namespace ds::zero_case {

constexpr int kT = 16;
constexpr int kGlobalRows = 4;  // sequences per global batch
constexpr int kSteps = 20;

inline nn::Gpt2Config tiny() { return nn::Gpt2Config::preset("gpt2-tiny"); }

struct Table {
  std::vector<int32_t> tokens;
  Table() : tokens(size_t(kGlobalRows) * kSteps * (kT + 1)) {
    Rng rng(11);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.next_u64() % 50257);
  }
  void fill(int row, int count, int32_t* in, int32_t* tg) const {
    for (int r = 0; r < count; ++r)
      for (int t = 0; t < kT; ++t) {
        in[r * kT + t] = tokens[size_t(row + r) * (kT + 1) + t];
        tg[r * kT + t] = tokens[size_t(row + r) * (kT + 1) + t + 1];
      }
  }
};

inline const Table& table() {
  static Table t;
  return t;
}

struct RunResult {
  std::vector<double> losses;
  std::vector<float> params;  // unpadded, in parameter order
  int64_t peak_param = 0, peak_grad = 0, peak_optimizer = 0;
  int64_t bytes_per_step = 0;        // over the world and every group
  int64_t model_bytes_per_step = 0;  // over the tensor-parallel (model) group alone
  int64_t psi_local = 0;             // parameters this rank's model share holds
  int64_t send_bytes_per_step = 0;   // point-to-point (pipeline stages)
  int layer_first = 0, layer_last = 0, blocks_local = 0;  // the stage's layers and its transformer blocks
  int64_t prefetches = 0, prefetch_hits = 0, peak_comm_buffer = 0;
};

// eps is 1e-3, not 1e-8: with a 50,257-token vocabulary most embedding rows get gradients near 1e-8 from the
// softmax alone, where Adam's m/sqrt(v) turns the rounding of a different summation order (per-rank partial sums)
// into full-size updates. A larger eps keeps the comparison about the partitioning, not Adam's conditioning.
// stage3_max_reuse_distance 0 releases every unit after use, so stage 3 moves the paper's 3Ψ (the default keeps
// units gathered when the trace reuses them soon, which saves traffic; tested separately below).
// `top` adds top-level keys (", \"tensor_parallel\": ...").
inline std::string config_json(int stage, int micro, int gas, bool overlap, const std::string& extra = "",
                               const std::string& top = "") {
  return fmt::format(R"({{"train_micro_batch_size_per_gpu": {}, "gradient_accumulation_steps": {} {},
      "optimizer": {{"type": "AdamW", "params": {{"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-3,
                                                 "weight_decay": 0.1}}}},
      "gradient_clipping": 1.0,
      "zero_optimization": {{"stage": {}, "overlap_comm": {} {}}}}})",
                     micro, gas, top, stage, overlap ? "true" : "false",
                     extra.find("stage3_max_reuse_distance") == std::string::npos
                         ? ", \"stage3_max_reuse_distance\": 0" + extra
                         : extra);
}

// One rank's run under the current memory tracker: rows of global step s are [4s, 4s+4); data-parallel rank r's
// micro-step k reads rows 4s + r*micro*gas + k*micro (the ranks of one model group read the same rows).
// bytes_per_step counts the traffic of every group the rank belongs to.
inline RunResult run_case(comm::Communicator& comm, int stage, int micro, int gas, bool overlap,
                          const std::string& extra = "", const std::string& top = "",
                          bool checkpoint_activations = false) {
  RunResult out;
  MemoryTracker& tracker = current_tracker();
  config::DeepSpeedConfig cfg =
      config::parse_config(config_json(stage, micro, gas, overlap, extra, top), comm.size(), "zero_case");
  cfg.activation_checkpointing.enabled = checkpoint_activations;
  engine::Engine engine(tiny(), cfg, kT, &comm, 42);
  const int dp_rank = engine.topology().coords().data;
  int step = 0, k = 0;
  auto next = [&](int32_t* in, int32_t* tg) {
    table().fill(kGlobalRows * step + dp_rank * micro * gas + k * micro, micro, in, tg);
    k = (k + 1) % gas;
  };
  comm::Topology& topo = engine.topology();
  auto bytes = [&] { return topo.stats().total_bytes(); };
  auto model_bytes = [&] { return topo.model().size() > 1 ? topo.model().stats().total_bytes() : 0; };
  auto send_bytes = [&] { return topo.stats().bytes[static_cast<int>(comm::Collective::send)]; };
  int64_t bytes_before = 0, model_bytes_before = 0, send_before = 0;
  for (step = 0; step < kSteps; ++step) {
    if (step == 1) bytes_before = bytes(), model_bytes_before = model_bytes(), send_before = send_bytes();
    out.losses.push_back(engine.train_batch(next).loss);
  }
  out.send_bytes_per_step = (send_bytes() - send_before) / (kSteps - 1);
  out.bytes_per_step = (bytes() - bytes_before) / (kSteps - 1);
  out.model_bytes_per_step = (model_bytes() - model_bytes_before) / (kSteps - 1);
  out.psi_local = engine.model().params().numel();
  out.layer_first = engine.model().range().first;
  out.layer_last = engine.model().range().last;
  out.blocks_local = static_cast<int>(engine.model().blocks().size());
  out.params = engine.full_parameters();  // a collective at stage 3 and under tensor parallelism
  out.prefetches = engine.optimizer().prefetches_issued();
  out.prefetch_hits = engine.optimizer().prefetch_hits();
  out.peak_comm_buffer = tracker.peak(Tier::device, Category::comm_buffer);
  out.peak_param = tracker.peak(Tier::device, Category::param);
  out.peak_grad = tracker.peak(Tier::device, Category::grad);
  out.peak_optimizer = tracker.peak(Tier::device, Category::optimizer);
  return out;
}

// A stretch of a run, for checkpoints moved between layouts: steps [first, last) on this rank with the config
// `json` (micro-batches of `micro` sequences, `gas` per step, each data-parallel rank reading rows as run_case
// does), resuming from `load` and saving to `save` at the end when given.
struct Segment {
  std::vector<double> losses;
  std::vector<float> params;  // the whole model, unpadded
};
inline Segment run_segment(comm::Communicator& comm, const std::string& json, int micro, int gas, int first,
                           int last, const std::string& load, const std::string& save) {
  config::DeepSpeedConfig cfg = config::parse_config(json, comm.size(), "segment");
  engine::Engine engine(tiny(), cfg, kT, &comm, 42);
  if (!load.empty()) engine.load_checkpoint(load);
  EXPECT_EQ(engine.global_steps(), first);
  const int dp_rank = engine.topology().coords().data;
  int step = first, k = 0;
  auto next = [&](int32_t* in, int32_t* tg) {
    table().fill(kGlobalRows * step + dp_rank * micro * gas + k * micro, micro, in, tg);
    k = (k + 1) % gas;
  };
  Segment out;
  for (; step < last; ++step) out.losses.push_back(engine.train_batch(next).loss);
  if (!save.empty()) engine.save_checkpoint(save);
  out.params = engine.full_parameters();
  return out;
}

// Segments joined into one run's losses, with the last one's parameters.
inline RunResult joined(std::initializer_list<const Segment*> segments) {
  RunResult r;
  for (const Segment* s : segments) {
    r.losses.insert(r.losses.end(), s->losses.begin(), s->losses.end());
    r.params = s->params;
  }
  return r;
}

// Consolidates a checkpoint into `out` (dspeed ckpt consolidate) and reads every parameter back, in declaration
// order: what full_parameters() gives for the run that saved it.
inline std::vector<float> consolidated_values(const ckpt::CheckpointReader& reader, const std::string& out) {
  ckpt::consolidate_checkpoint(reader, out, "fp32");
  const ckpt::SafetensorsFile file = ckpt::SafetensorsFile::open(out);
  std::vector<float> values;
  for (const ckpt::CheckpointParam& p : reader.params()) {
    const std::vector<float> v = ckpt::read_safetensors_f32(file, p.name);
    values.insert(values.end(), v.begin(), v.end());
  }
  return values;
}

// Per-step losses and final parameters within 1e-5 (relative) of the reference run.
inline void expect_same_trajectory(const RunResult& got, const RunResult& ref, const std::string& what) {
  EXPECT_EQ(got.losses.size(), ref.losses.size()) << what;
  for (size_t i = 0; i < std::min(got.losses.size(), ref.losses.size()); ++i)
    EXPECT_NEAR(got.losses[i], ref.losses[i], 1e-5 * std::fabs(ref.losses[i])) << what << " step " << i;
  EXPECT_EQ(got.params.size(), ref.params.size()) << what;
  if (got.params.size() != ref.params.size()) return;
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < ref.params.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(got.params[i] - ref.params[i])));
    max_abs = std::max(max_abs, double(std::fabs(ref.params[i])));
  }
  EXPECT_LE(max_diff / max_abs, 1e-5) << what;
}

inline void expect_memory_and_traffic(const RunResult& r, int stage, int world, const std::string& what) {
  const double psi = static_cast<double>(tiny().num_params());
  const double n = world;
  // fp32 Adam: params 4Ψ, grads 4Ψ, optimizer (m, v) 8Ψ; stage 1 divides the optimizer by N, stage 2 also the
  // gradients, stage 3 also the parameters.
  const double want_param = stage == 3 ? 4 * psi / n : 4 * psi;
  const double want_grad = stage >= 2 ? 4 * psi / n : 4 * psi;
  const double want_opt = stage >= 1 ? 8 * psi / n : 8 * psi;
  EXPECT_NEAR(r.peak_param, want_param, 0.05 * want_param) << what;
  EXPECT_NEAR(r.peak_grad, want_grad, 0.05 * want_grad) << what;
  EXPECT_NEAR(r.peak_optimizer, want_opt, 0.05 * want_opt) << what;
  const double total = r.peak_param + r.peak_grad + r.peak_optimizer;
  const double formula = stage == 0   ? 16 * psi
                         : stage == 1 ? 8 * psi + 8 * psi / n
                         : stage == 2 ? 4 * psi + 12 * psi / n
                                      : 16 * psi / n;
  EXPECT_NEAR(total, formula, 0.05 * formula) << what;
  // Traffic per step and rank: 2Ψ (stages 0-2) or 3Ψ (stage 3) elements of 4 bytes, times the ring factor.
  const double want_bytes = (stage == 3 ? 3.0 : 2.0) * psi * 4 * (n - 1) / n;
  EXPECT_NEAR(static_cast<double>(r.bytes_per_step), want_bytes, 0.05 * want_bytes) << what;
}

}  // namespace ds::zero_case
