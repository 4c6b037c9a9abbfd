// The GPT-2 weight list (gpt2_spec.h) in declaration order: the order the training model declares its parameters in
// and the order checkpoints and consolidated files list them.
#include "ds/nn/models/gpt2_spec.h"

namespace ds::nn {

std::vector<Gpt2Weight> gpt2_weight_spec(int n_layer, int n_embd, int vocab_size, int block_size,
                                         const std::vector<int>& experts, bool use_residual) {
  const int64_t C = n_embd;
  std::vector<Gpt2Weight> spec;
  spec.push_back({Gpt2Role::wte, -1, "transformer.wte.weight", {vocab_size, C}});
  spec.push_back({Gpt2Role::wpe, -1, "transformer.wpe.weight", {block_size, C}});
  for (int l = 0; l < n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    auto add = [&](Gpt2Role role, const std::string& name, std::vector<int64_t> shape, int expert = -1) {
      spec.push_back({role, l, p + name, std::move(shape), expert});
    };
    add(Gpt2Role::ln1_w, "ln_1.weight", {C});
    add(Gpt2Role::ln1_b, "ln_1.bias", {C});
    add(Gpt2Role::qkv_w, "attn.c_attn.weight", {C, 3 * C});
    add(Gpt2Role::qkv_b, "attn.c_attn.bias", {3 * C});
    add(Gpt2Role::proj_w, "attn.c_proj.weight", {C, C});
    add(Gpt2Role::proj_b, "attn.c_proj.bias", {C});
    add(Gpt2Role::ln2_w, "ln_2.weight", {C});
    add(Gpt2Role::ln2_b, "ln_2.bias", {C});
    const int E = static_cast<size_t>(l) < experts.size() ? experts[static_cast<size_t>(l)] : 0;
    if (E > 0) add(Gpt2Role::moe_gate_w, "mlp.gate.weight", {C, E});
    if (E == 0 || use_residual) {
      add(Gpt2Role::fc_w, "mlp.c_fc.weight", {C, 4 * C});
      add(Gpt2Role::fc_b, "mlp.c_fc.bias", {4 * C});
      add(Gpt2Role::fc2_w, "mlp.c_proj.weight", {4 * C, C});
      add(Gpt2Role::fc2_b, "mlp.c_proj.bias", {C});
    }
    if (E > 0 && use_residual) {
      add(Gpt2Role::moe_coef_w, "mlp.coefficient.weight", {C, 2});
      add(Gpt2Role::moe_coef_b, "mlp.coefficient.bias", {2});
    }
    for (int e = 0; e < E; ++e) {
      const std::string x = "mlp.experts." + std::to_string(e) + ".";
      add(Gpt2Role::expert_fc_w, x + "c_fc.weight", {C, 4 * C}, e);
      add(Gpt2Role::expert_fc_b, x + "c_fc.bias", {4 * C}, e);
      add(Gpt2Role::expert_fc2_w, x + "c_proj.weight", {4 * C, C}, e);
      add(Gpt2Role::expert_fc2_b, x + "c_proj.bias", {C}, e);
    }
  }
  spec.push_back({Gpt2Role::lnf_w, -1, "transformer.ln_f.weight", {C}});
  spec.push_back({Gpt2Role::lnf_b, -1, "transformer.ln_f.bias", {C}});
  return spec;
}

}  // namespace ds::nn
