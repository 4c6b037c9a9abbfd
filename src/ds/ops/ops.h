// The ops layer: the model's operations over Tensors. Each op checks what a caller can get wrong — that every
// tensor is on one device, has the dtype the op computes in, and has the shape the others imply — and raises a
// clear error (DeviceError, ShapeError) naming the op, the argument and what was expected; then it dispatches to
// the kernels of that device (kernels/cpu, kernels/cuda). Kernels themselves stay on raw pointers (llm.c style).
// Gradient convention as the kernels: parameter gradients are accumulated (+=), activation gradients written (=).
// Shapes: N rows (B*T), C channels, NH heads, V vocabulary; weights in Hugging Face GPT-2 layouts (Conv1D [in, out],
// wte [V, C]). An op with no kernel on a device says so (DeviceError) rather than running elsewhere.
#pragma once

#include <cstdint>

#include "ds/core/tensor.h"

namespace ds::cpu {
struct AdamParams;
struct LambParams;
}

namespace ds::ops {

// ---- linear: y[N, OC] = x[N, IC] @ w[IC, OC] + b[OC] (b may be undefined) ----
void linear_forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b);
// dx = dy @ w^T (skipped when dx is undefined); dw += x^T @ dy (skipped when dw is undefined, as then db);
// db += column sums of dy (when defined). A zero-bubble schedule runs the dx part and the dw part apart.
void linear_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                     const Tensor& w);

// ---- layer norm over the last dimension C (eps 1e-5); stats [2, N] keeps mean and 1/std for backward ----
void layernorm_forward(const Tensor& y, const Tensor& stats, const Tensor& x, const Tensor& w, const Tensor& b);
// dx written, dw and db accumulated; either dx or the pair (dw, db) may be undefined and is then skipped.
void layernorm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                        const Tensor& w, const Tensor& stats);

// ---- element-wise ----
void gelu_forward(const Tensor& y, const Tensor& x);                     // tanh approximation
void gelu_backward(const Tensor& dx, const Tensor& x, const Tensor& dy);  // dx may alias dy
void add(const Tensor& out, const Tensor& a, const Tensor& b);           // out may alias a or b
void add_inplace(const Tensor& y, const Tensor& x);                      // y += x

// ---- rows: MoE dispatch and combine (nn/moe.cpp); f32 rows of C, i32 row indices, one per row or assignment ----
// out[i] = x[index[i]], zeros where index[i] < 0. out [n, C], x [m, C], index [n].
void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index);
// out[s] = sum_j weight[s*k + j] * y[row[s*k + j]] over k = row.numel() / S (rows < 0 skipped; weight undefined:
// 1). out [S, C], y [R, C], row and weight [S*k].
void combine_rows(const Tensor& out, const Tensor& y, const Tensor& row, const Tensor& weight);
// Its backward: dweight[a] = dout[s] . y[row[a]]; dy[row[a]] = weight[a] * dout[s] (other rows of dy untouched).
void combine_rows_backward(const Tensor& dy, const Tensor& dweight, const Tensor& dout, const Tensor& y,
                           const Tensor& row, const Tensor& weight);
// ---- causal self-attention: qkv [B*T, 3C] -> y [B*T, C]; att [B, NH, T, T] saved for backward ----
void attention_forward(const Tensor& y, const Tensor& att, const Tensor& qkv, int B, int T, int NH);
// Floats of scratch attention_backward needs.
int64_t attention_backward_scratch(int B, int T, int C, int NH);
void attention_backward(const Tensor& dqkv, const Tensor& dy, const Tensor& qkv, const Tensor& att,
                        const Tensor& scratch, int B, int T, int NH);

// ---- embeddings: ids [B*T] i32 token ids ----
// x[B*T, C] = wte[ids] + wpe[t]
void embedding_forward(const Tensor& x, const Tensor& ids, const Tensor& wte, const Tensor& wpe, int B, int T);
// x = rows + wpe[t], the token rows already looked up (a partitioned wte)
void embedding_forward_rows(const Tensor& x, const Tensor& rows, const Tensor& wpe, int B, int T);
// dwte[ids] += dx rows (skipped when dwte is undefined); dwpe[t] += sum over the batch.
void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dx, const Tensor& ids, int B, int T);

// ---- the tied head and its cross-entropy; targets [N] i32, -1 = ignored ----
// Fused and chunked: returns the sum of the losses; with dh defined, dh = grad_scale * dL/dh (written) and
// dwte += grad_scale * dL/dwte. scratch holds classifier_scratch(N, V) floats.
int64_t classifier_scratch(int N, int V);
double classifier(const Tensor& dh, const Tensor& dwte, const Tensor& h, const Tensor& wte, const Tensor& targets,
                  float grad_scale, const Tensor& scratch);
// logits [N, V] = h @ wte^T
void logits(const Tensor& logits, const Tensor& h, const Tensor& wte);
// The head a slice of wte's rows at a time (Note [Sliced head] in nn/models/gpt2.cpp): w holds rows
// [row_begin, row_begin + w.size(0)); logits_rows writes those columns; softmax_xent turns logits [N, V] into
// grad_scale * (softmax - onehot) in place when want_grad and returns the loss sum; classifier_rows_backward adds
// the slice's share to dh and dw.
void logits_rows(const Tensor& logits, const Tensor& h, const Tensor& w, int64_t row_begin);
double softmax_xent(const Tensor& logits, const Tensor& targets, bool want_grad, float grad_scale);
void classifier_rows_backward(const Tensor& dh, const Tensor& dw, const Tensor& dlogits, const Tensor& h,
                              const Tensor& w, int64_t row_begin);

// ---- vocabulary parallelism (Megatron): this rank holds rows [begin, begin + Vl) of wte ----
// The cross-entropy over logits [N, Vl] in three passes, the caller all-reducing stats [3, N] between them
// (kernels/cpu/kernels.h: vocab_xent_*): the row maxima (max-reduce), then the sums of exps and the targets'
// logits (sum-reduce), then the loss sum, with want_grad turning the logits into grad_scale * (softmax - onehot).
void vocab_xent_max(const Tensor& logits, const Tensor& stats);
void vocab_xent_sums(const Tensor& logits, const Tensor& stats, const Tensor& targets, int64_t begin);
double vocab_xent_finish(const Tensor& logits, const Tensor& stats, const Tensor& targets, int64_t begin,
                         bool want_grad, float grad_scale);
// rows [N, C]: table's row ids[i] - begin when this rank holds it, else zeros; and dtable[ids[i] - begin] += dx[i].
void vocab_rows_forward(const Tensor& rows, const Tensor& table, const Tensor& ids, int64_t begin);
void vocab_rows_backward(const Tensor& dtable, const Tensor& dx, const Tensor& ids, int64_t begin);

// ---- the optimizer's step over one chunk of the partition ----
// Adam/AdamW (DeepSpeed's CPU-Adam semantics, kernels/cpu/kernels.h: adamw_step) on fp32 param, m and v with the
// gradient multiplied by grad_scale first. grad is fp32, or bf16/f16 widened through `wide` (an fp32 tensor of at
// least grad's elements; may be undefined for an fp32 grad).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const cpu::AdamParams& hyper, float grad_scale, const Tensor& wide = Tensor());
// Mixed precision's step in one pass (kernels/cpu/kernels.h: adamw_step_mixed): fp32 master, m and v updated from a
// gradient in f32, bf16 or f16, and the new master rounded into the 16-bit `param`. CPU only.
void adamw_step_mixed(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param,
                      const cpu::AdamParams& hyper, float grad_scale);
// Sum of the squares of x's elements (f32, bf16 or f16) in double precision.
double sum_squares(const Tensor& x);
// LAMB's three passes over one parameter tensor (DeepSpeed's FusedLamb, kernels/cpu/kernels.h): the moments from
// the gradient multiplied by grad_scale (grad fp32, or 16-bit widened through `wide`), the sum of squares of the
// update, and the update scaled by `step` (lamb_step_size x lamb_coefficient). fp32 param, m and v; CPU only.
void lamb_moments(const Tensor& grad, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper,
                  float grad_scale, const Tensor& wide = Tensor());
double lamb_update_sum_squares(const Tensor& param, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper);
void lamb_apply(const Tensor& param, const Tensor& m, const Tensor& v, const cpu::LambParams& hyper, float step);

// The compressed optimizers' passes (1-bit Adam, 0/1 Adam; kernels/cpu/kernels.h), fp32 tensors of one size on the
// CPU: the momentum from a gradient (f32, or 16-bit widened through `wide`); the frozen-variance step; 0/1 Adam's
// local steps since `base` as momentum, and the averaged ones applied from `base`.
void momentum_update(const Tensor& m, const Tensor& grad, float beta1, float grad_scale, const Tensor& wide = Tensor());
void frozen_adam_apply(const Tensor& param, const Tensor& m, const Tensor& v, float lr, float eps, float weight_decay);
void local_steps_delta(const Tensor& delta, const Tensor& param, const Tensor& base, const Tensor& v, float eps);
void local_steps_apply(const Tensor& param, const Tensor& m, const Tensor& v, const Tensor& base, const Tensor& avg,
                       float eps, float lrs);

}  // namespace ds::ops
