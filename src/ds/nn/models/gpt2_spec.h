// The weights of GPT-2, once: each tensor's Hugging Face name, shape and role. The training model checks its
// parameters against this list when it is built (same names, shapes and order), initialises them by role, and
// counts them from it; inference reads its weights from a file by it and places each by role, on the CPU or on a
// GPU. Layouts are Hugging Face's: wte [V, C], wpe [context, C], Conv1D weights [in, out], vectors [n].
// This header is C++17 (the CUDA forward includes it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::nn {

// Model-level roles first, then the twelve of each transformer layer in the order a layer declares them.
// An MoE block (moe.h) has, in place of its MLP, the gate, with use_residual the MLP (fc, fc2) and the coefficient,
// then each expert's four weights; these roles have no slot in a forward's table (the serving forwards hold dense
// blocks).
enum class Gpt2Role : int8_t {
  wte, wpe, lnf_w, lnf_b,
  ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b,
  moe_gate_w, moe_coef_w, moe_coef_b, expert_fc_w, expert_fc_b, expert_fc2_w, expert_fc2_b,
};
inline constexpr int kGpt2ModelRoles = 4;
inline constexpr int kGpt2LayerRoles = 12;
inline constexpr bool is_layer_role(Gpt2Role r) { return static_cast<int>(r) >= kGpt2ModelRoles; }
// A dense index of every weight, for a forward's table of placed weights: the model roles, then each layer's
// twelve in order. gpt2_weight_slots(n_layer) is the table's size.
inline constexpr int gpt2_weight_slot(Gpt2Role r, int layer) {
  return is_layer_role(r) ? kGpt2ModelRoles + layer * kGpt2LayerRoles + (static_cast<int>(r) - kGpt2ModelRoles)
                          : static_cast<int>(r);
}
inline constexpr int gpt2_weight_slots(int n_layer) { return kGpt2ModelRoles + n_layer * kGpt2LayerRoles; }

struct Gpt2Weight {
  Gpt2Role role;
  int layer = -1;  // -1 for wte, wpe and ln_f
  std::string name;
  std::vector<int64_t> shape;
  int expert = -1;  // an expert's weight: its index in the layer
  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
};

// In declaration order: wte, wpe, the layers' twelve each, ln_f's two. With `experts` (one count per layer, 0 for a
// dense one), a layer with experts has the MoE weights in place of its MLP's.
std::vector<Gpt2Weight> gpt2_weight_spec(int n_layer, int n_embd, int vocab_size, int block_size,
                                         const std::vector<int>& experts = {}, bool use_residual = false);

}  // namespace ds::nn
