// The GPT-2 inference pass over a ragged batch, written once. Each backend (the CPU forward in model_runner.cpp,
// the CUDA forward in cuda/cuda_gpt.cu) supplies a step set over its own buffers and weight layout; this function
// fixes what runs in which order on which buffer, so the two cannot drift apart.
//
// Buffers of a pass of N new tokens (C channels): x [N, C] the residual stream, h [N, C] a normalised or projected
// copy, qkv [N, 3C], att [N, C], mlp [N, 4C]. A step set provides:
//   embed(x)                            x[i] = wte[id of token i] + wpe[position of token i]
//   layernorm(out, in, layer, w, b)     LayerNorm of every row of `in` with the weights of roles w and b
//   linear(out, in, layer, w, b)        out = in @ W + b
//   linear_gelu(out, in, layer, w, b)   out = gelu(in @ W + b)
//   linear_residual(x, in, tmp, layer, w, b)
//                                       x += in @ W + b (tmp: an [N, C] buffer it may overwrite)
//   attention(out, qkv, layer)          writes each token's K and V into its cache slot, then each token attends
//                                       over positions 0 .. its own of its sequence, through the block table
//   experts(layer)                      the layer's experts (0: a dense MLP)
//   moe_residual(x, in, layer)          x += the MoE layer of `in` (nn/moe.h): each token through its top-k
//                                       experts, none dropped (Residual-MoE: mixed with the layer's MLP)
//   final_norm(out, x)                  ln_f of each sequence's last new token (every new token of a sequence in
//                                       batch.all_logits), in sequence order
//   head(out)                           one row of logits per row of out: out @ wte^T
// where `layer` is the layer index and the roles are gpt2_spec.h's. This header is C++17.
#pragma once

#include "ds/nn/models/gpt2_spec.h"

namespace ds::inference {

enum class PassBuffer { x, h, qkv, att, mlp };

template <class Steps>
void gpt2_ragged_forward(Steps& s, int n_layer) {
  using B = PassBuffer;
  using R = nn::Gpt2Role;
  s.embed(B::x);
  for (int l = 0; l < n_layer; ++l) {
    s.layernorm(B::h, B::x, l, R::ln1_w, R::ln1_b);
    s.linear(B::qkv, B::h, l, R::qkv_w, R::qkv_b);
    s.attention(B::att, B::qkv, l);
    s.linear_residual(B::x, B::att, B::h, l, R::proj_w, R::proj_b);
    s.layernorm(B::h, B::x, l, R::ln2_w, R::ln2_b);
    if (s.experts(l) > 0) {
      s.moe_residual(B::x, B::h, l);
      continue;
    }
    s.linear_gelu(B::mlp, B::h, l, R::fc_w, R::fc_b);
    s.linear_residual(B::x, B::mlp, B::h, l, R::fc2_w, R::fc2_b);
  }
  s.final_norm(B::h, B::x);
  s.head(B::h);
}

}  // namespace ds::inference
