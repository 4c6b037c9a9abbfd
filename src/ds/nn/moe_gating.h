// Mixture-of-Experts routing (DeepSpeed's TopKGate, deepspeed/moe/sharded_moe.py): from the gate's logits to which
// expert slot each token goes and with what weight, and back from the weights' gradients to the logits'. A pure
// function of its inputs over small [S, E] host arrays, so every option can be tested against a plain reference and
// finite differences. The dispatch itself (rows to experts, all-to-all) is the layer's (moe.h).
// Routing is described per assignment (token s's j-th choice, row s*k + j), never as DeepSpeed's [S, E, C] one-hot
// tensors: a dropped assignment has slot -1, and the capacity-based and the dropless path share one description.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::nn {

// DeepSpeed's noisy_gate_policy: None, 'Jitter' (the gate's input times U(1-1e-2, 1+1e-2)), 'RSample' (top-1: the
// expert chosen over logits plus Gumbel noise). Both in training only.
enum class NoisyGate : uint8_t { none, jitter, rsample };
// Top-k (k > 2) drop policy: keep each expert's C assignments of highest gate value, or its first C in token order.
enum class TopkDrop : uint8_t { probs, position };

// The gate options of DeepSpeed's MoE layer, with its defaults.
struct GateOptions {
  int num_experts = 1;
  int k = 1;
  double capacity_factor = 1.0;
  double eval_capacity_factor = 1.0;
  int min_capacity = 4;
  NoisyGate noisy_gate_policy = NoisyGate::none;
  bool drop_tokens = true;  // false: dropless, every assignment is kept (no capacity)
  bool use_rts = true;      // top-1: the kept tokens of an over-full expert are chosen at random, not by position
  bool top2_2nd_expert_sampling = true;  // top-2: the second expert chosen over logits plus Gumbel noise
  TopkDrop drop_policy = TopkDrop::probs;
};

// DeepSpeed's _capacity: ceil(S / E * factor * k), at least min_capacity.
int64_t expert_capacity(int64_t S, int E, double factor, int k, int min_capacity);

struct Routing {
  int64_t S = 0;
  int E = 0, k = 0;
  int64_t capacity = -1;          // slots per expert; -1: dropless (each expert takes what it is routed)
  std::vector<int32_t> expert;    // [S*k] the expert of assignment s*k + j
  std::vector<int32_t> slot;      // [S*k] its row in the expert's input, -1 when dropped
  std::vector<float> weight;      // [S*k] its combine weight (0 when dropped)
  std::vector<int64_t> rows;      // [E] kept assignments per expert: its slots [0, rows) are filled
  std::vector<int64_t> routed;    // [E] assignments routed to it before dropping
  std::vector<float> gates;       // [S*E] softmax of the logits
  std::vector<float> lse;         // [S] logsumexp of each token's logits
  std::vector<float> ce;          // [E] the routed fraction the load-balancing loss uses
  double l_aux = 0;               // the load-balancing loss (Switch/GShard), computed before dropping
  double z_loss = 0;              // the router z-loss (ST-MoE): mean over tokens of lse^2
  int64_t dropped = 0;            // assignments dropped for capacity
  int64_t assignments() const { return S * k; }
};

// Routes S tokens given their gate logits [S, E]. Noise (RSample, top-2 sampling) and RTS draw from a generator
// seeded with `noise_seed`, in a fixed order, so a pass recomputed under activation checkpointing routes alike.
// Capacity uses capacity_factor in training and eval_capacity_factor otherwise.
Routing route_tokens(const float* logits, int64_t S, const GateOptions& options, bool training, uint64_t noise_seed);

// A routing's kept assignments grouped by expert, as a serving forward runs them: expert e's rows are
// [offset[e], offset[e+1]) in slot order, grouped row i holds token token[i], and assignment a's row is row[a]
// (-1 when dropped).
struct ExpertGroups {
  std::vector<int64_t> offset;  // [E + 1]
  std::vector<int32_t> token;   // [kept assignments]
  std::vector<int32_t> row;     // [S*k]
};
ExpertGroups group_by_expert(const Routing& r);

// dlogits [S, E] (written) from dweight [S*k], the gradient of each assignment's combine weight, aux_grad = dLoss /
// d l_aux and z_grad = dLoss / d z_loss. Dropped assignments' dweight is ignored.
void route_tokens_backward(const Routing& r, const float* dweight, float aux_grad, float z_grad, float* dlogits);

const char* noisy_gate_name(NoisyGate g);
// "Jitter", "RSample" or "" / "None" (DeepSpeed's spellings); nullopt-like: throws ConfigError naming `where`.
NoisyGate noisy_gate_from_name(const std::string& name, const std::string& where);

}  // namespace ds::nn
