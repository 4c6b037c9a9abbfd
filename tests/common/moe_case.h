// The MoE equivalence case shared by tests/engine/moe_test.cpp (thread backend) and tests/comm_mpi (MPI): the tiny
// GPT-2 with 4 experts in every other block, trained for 20 steps on one sequence per pass (so a pass routes the
// same 16 tokens with the same capacity whatever the layout), and the all-to-all traffic against its formula.
#pragma once

#include <gtest/gtest.h>

#include "common/zero_case.h"

namespace ds::moe_case {

using zero_case::kT;

// Noise and RTS off: the routing is then a function of the tokens alone, so every layout routes alike.
inline nn::Gpt2Config tiny_moe(int k, bool dropless, int ep, bool residual = false) {
  nn::Gpt2Config c = zero_case::tiny();
  c.name = "tiny-moe";
  c.moe.num_experts = {4};
  c.moe.layer_interval = 2;
  c.moe.ep_size = ep;
  nn::GateOptions& g = c.moe.options.gate;
  g.k = k;
  g.drop_tokens = !dropless;
  g.use_rts = false;
  g.top2_2nd_expert_sampling = false;
  c.moe.options.use_residual = residual;
  c.moe.options.z_loss_coef = 1e-3;
  return c;
}

struct MoeRun {
  zero_case::RunResult run;
  std::vector<engine::StepResult> steps;
  int64_t a2a_bytes_last_step = 0;  // all-to-all bytes this rank sent over the expert group in the last step
  nn::MoeStats last_stats;          // this rank's routing in the last step
  // Every rank of the expert group's routed counts in the last step: [group rank][MoE layer][expert].
  std::vector<std::vector<std::vector<int64_t>>> group_routed;
  int ep_rank = 0, ep = 1;
  int64_t expert_param_numel = 0;   // this rank's experts
};

// One rank's run: one sequence per micro-batch, `gas` micro-batches per step; data-parallel rank r reads rows
// 4s + r*gas + k in step s (the single-process run with gas 4 reads them all, in the same order).
// Steps [first, last), resuming from the checkpoint directory `load` and saving to `save` when given.
// `top` adds top-level config keys (", \"bf16\": ..."); `checkpointed` turns activation checkpointing on.
inline MoeRun run_moe(comm::Communicator& comm, const nn::Gpt2Config& model, int stage, int gas,
                      const std::string& extra = "", int first = 0, int last = zero_case::kSteps,
                      const std::string& load = "", const std::string& save = "", const std::string& top = "",
                      bool checkpointed = false) {
  config::DeepSpeedConfig cfg =
      config::parse_config(zero_case::config_json(stage, 1, gas, false, extra, top), comm.size(), "moe_case");
  cfg.activation_checkpointing.enabled = checkpointed;
  engine::Engine engine(model, cfg, kT, &comm, 42);
  if (!load.empty()) engine.load_checkpoint(load);
  EXPECT_EQ(engine.global_steps(), first);
  const int dp_rank = engine.topology().coords().data;
  int step = first, k = 0;
  auto next = [&](int32_t* in, int32_t* tg) {
    zero_case::table().fill(zero_case::kGlobalRows * step + dp_rank * gas + k, 1, in, tg);
    k = (k + 1) % gas;
  };
  MoeRun out;
  comm::Communicator& group = engine.topology().expert();
  auto a2a = [&] { return group.stats().bytes[static_cast<int>(comm::Collective::all_to_all)]; };
  for (; step < last; ++step) {
    const int64_t before = a2a();
    out.steps.push_back(engine.train_batch(next));
    out.run.losses.push_back(out.steps.back().loss);
    out.a2a_bytes_last_step = a2a() - before;
  }
  out.last_stats = engine.moe_stats();
  out.ep_rank = group.rank();
  out.ep = group.size();
  // The group's counts, for the formula: what each rank routed is what it sends, and what its peers routed to its
  // experts is what it sends back.
  std::vector<int32_t> mine;
  for (const auto& layer : out.last_stats.routed)
    for (const int64_t n : layer) mine.push_back(static_cast<int32_t>(n));
  std::vector<int32_t> all(mine.size() * size_t(out.ep));
  group.all_gather(mine.data(), all.data(), mine.size(), DType::i32);
  for (int g = 0; g < out.ep; ++g) {
    auto& ranks = out.group_routed.emplace_back();
    size_t at = size_t(g) * mine.size();
    for (const auto& layer : out.last_stats.routed) {
      ranks.emplace_back(all.begin() + at, all.begin() + at + layer.size());
      at += layer.size();
    }
  }
  out.expert_param_numel = engine.model().expert_params().numel();
  if (!save.empty()) engine.save_checkpoint(save);
  out.run.params = engine.full_parameters();
  return out;
}

// The all-to-all bytes one rank sends in a step of `passes` passes (Note [MoE dispatch] in nn/moe.cpp): per MoE
// layer and pass, the rows it routes to other ranks' experts go out twice (the dispatch forward, the output
// gradient backward) and the rows the other ranks routed to its experts go back twice (the combine forward, the
// input gradient backward): C rows per expert capacity-based, the routed assignments dropless, which also sends
// El int32 counts to each other rank in forward.
inline int64_t a2a_formula(const nn::Gpt2Config& model, const MoeRun& r, int passes) {
  const nn::GateOptions& g = model.moe.options.gate;
  const int E = model.moe.num_experts[0], El = E / r.ep;
  const int64_t row_bytes = int64_t(model.n_embd) * 4;
  const int64_t cap = nn::expert_capacity(kT, E, g.capacity_factor, g.k, g.min_capacity);
  int64_t rows = 0;
  for (size_t layer = 0; layer < r.last_stats.routed.size(); ++layer) {
    for (int e = 0; e < E; ++e) {
      if (e / El == r.ep_rank) {  // its own experts: back to every peer what the peer routed here
        for (int peer = 0; peer < r.ep; ++peer)
          if (peer != r.ep_rank)
            rows += 2 * (g.drop_tokens ? cap * passes : r.group_routed[size_t(peer)][layer][size_t(e)]);
      } else {  // a peer's expert: out what this rank routed there
        rows += 2 * (g.drop_tokens ? cap * passes : r.last_stats.routed[layer][size_t(e)]);
      }
    }
  }
  const int64_t counts = g.drop_tokens ? 0 : int64_t(r.last_stats.routed.size()) * passes * El * (r.ep - 1) * 4;
  return rows * row_bytes + counts;
}

}  // namespace ds::moe_case
