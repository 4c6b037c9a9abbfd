// CPU reference-and-fast kernels for the GPT family, forward and backward, on raw fp32 pointers (llm.c style).
// Gradient convention: parameter grads are accumulated (+=), activation grads are written (=), unless a
// function says otherwise. Dimension letters: B batch, T time, C channels, NH heads, HS head size, V vocab,
// N = rows (usually B*T). Weights of linear layers use the Hugging Face GPT-2 Conv1D layout [in, out], so a
// forward is out = inp @ weight (+ bias). Loops are parallel over OpenMP; GEMMs go to OpenBLAS cblas_sgemm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "ds/core/convert.h"
#include "ds/core/dtype.h"
#include "ds/kernels/adam_coeffs.h"

namespace ds::cpu {

// ---- embeddings ----
// out[B,T,C] = wte[inp[b,t]] + wpe[t]
void encoder_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int B, int T, int C);
// out[B,T,C] = rows[B,T,C] + wpe[t] (the token rows already looked up; same rounding as encoder_forward)
void encoder_forward_rows(float* out, const float* rows, const float* wpe, int B, int T, int C);
// dwte[V,C] += scatter(dout), dwpe[T,C] += sum over batch. Deterministic (no atomics); either may be null.
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* inp, int B, int T, int C);

// ---- layer norm (eps 1e-5, biased variance, as torch.nn.LayerNorm) ----
// mean[N], rstd[N] are saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
// dinp = ..., dweight += ..., dbias += ...
// dinp (written) may be null: only the parameter gradients; dweight and dbias (accumulated) may both be null: only
// the input gradient.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C);

// ---- linear ----
// out[N,OC] = inp[N,IC] @ weight[IC,OC] + bias[OC] (bias may be null)
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC);
// Weights packed for the inference forward's few-row products: a [K, M] matrix in column panels of kPanelWidth,
// each [K][kPanelWidth] contiguous, the last padded with zeros. pack_panels reads W as weight[K, M] (rows of k,
// as matmul_forward's weight) or, with w_is_rows_of_k false, as its transpose [M, K] (wte for the head).
// panel_gemm: out[N, M] = x[N, K] @ W + bias[M] (bias may be null). Faster than sgemm for the few rows of a decode
// pass (no per-call packing, no horizontal sums); bm_kernels --only panel measures the two side by side.
inline constexpr int kPanelWidth = 32;
size_t panel_packed_floats(int K, int M);
void pack_panels(float* packed, const float* w, int K, int M, bool w_is_rows_of_k);
// The inverse of pack_panels: w in the same layout pack_panels read it from.
void unpack_panels(float* w, const float* packed, int K, int M, bool w_is_rows_of_k);
// The same panels with bf16 weights (the inference forward's --weights bf16): each panel [ceil(K/2)][32] 32-bit
// words, a word the bf16 of rows 2kk (low half) and 2kk + 1 (high half) of one column, zero past K and M.
// panel_gemm_bf16 rounds x to bf16 too and accumulates in fp32 (AVX512_BF16 vdpbf16ps where the CPU has it).
// panel_bf16_at reads back one weight, W[k][m], as fp32.
size_t panel_packed_bf16_words(int K, int M);
void pack_panels_bf16(uint32_t* packed, const float* w, int K, int M, bool w_is_rows_of_k);
void panel_gemm_bf16(float* out, const float* x, const uint32_t* packed, const float* bias, int N, int K, int M);
float panel_bf16_at(const uint32_t* packed, int K, int k, int m);
void panel_gemm(float* out, const float* x, const float* packed, const float* bias, int N, int K, int M);
// dinp[N,IC] = dout @ weight^T (skipped if dinp is null); dweight[IC,OC] += inp^T @ dout; dbias[OC] += sum(dout)
// (dbias may be null).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC);

// ---- GELU, tanh approximation (as GPT-2 and torch GELU(approximate='tanh')) ----
void gelu_forward(float* out, const float* inp, size_t n);
// dinp = gelu'(inp) * dout
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// ---- causal multi-head self-attention ----
// qkv[B,T,3C] holds q, k, v concatenated along channels (head h uses channels h*HS..h*HS+HS-1 of each).
// out[B,T,C] is the attention output before the projection; att[B,NH,T,T] receives the softmax probabilities
// (entries above the diagonal are written as 0) and is saved for backward. Scale 1/sqrt(HS).
void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
// dqkv[B,T,3C] = ... (written, not accumulated). scratch must hold at least
// attention_backward_scratch_floats(B,T,C,NH) floats.
size_t attention_backward_scratch_floats(int B, int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, float* scratch,
                        int B, int T, int C, int NH);

// ---- causal attention over a paged KV cache (inference) ----
// For each of N tokens: q = qkv[i, head h] ([N, 3C] rows as above), keys and values of positions 0..token_pos[i] of
// its sequence token_seq[i], read from kv: slot t of that sequence is slot t % block_size of block
// block_tables[seq][t / block_size], a slot being [2C] elements (K at 0, V at C) of kv_dtype (f32, or bf16 widened
// to fp32 as it is read) and a block block_size slots.
// out[N, C] (written). scratch holds paged_attention_scratch_floats(max_pos, C, NH) floats, max_pos > every
// token_pos.
size_t paged_attention_scratch_floats(int max_pos, int C, int NH);
void paged_attention_forward(float* out, const float* qkv, int N, const int32_t* token_seq, const int32_t* token_pos,
                             const int32_t* const* block_tables, const void* kv, DType kv_dtype, int block_size, int C,
                             int NH, float* scratch, int max_pos);

// ---- token sampling over a row of logits (inference/sampler.cpp) ----
// argmax: the first index of the largest value, NaNs ignored (0 when every value is NaN).
int64_t argmax(const float* x, int64_t n);
// w[i] = exp((x[i] - max) * inv_t), 0 where the exponent is below -87 (the float range), -inf or NaN; returns the
// sum of w in double.
double exp_weights(float* w, const float* x, int64_t n, float max, float inv_t);
// The sum of the w[i] that are >= threshold, in double.
double mass_at_least(const float* w, int64_t n, float threshold);
// The first i whose running sum w[0] + ... + w[i] exceeds target (0 <= target < the total); when rounding leaves
// target at or past the end, the last i with w[i] > 0; -1 if every weight is 0.
int64_t draw_index(const float* w, int64_t n, double target);
// The candidate order of sampling: higher value first, then lower id.
inline bool candidate_before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}
// out = (x[i], i) for every i with w[i] >= tau and w[i] > 0, in order of i.
void candidates_at_least(std::vector<std::pair<float, int32_t>>& out, const float* x, const float* w, int32_t n,
                         float tau);
// out = the k first (x[i], i) in candidate_before's order, NaNs never (in no particular order; fewer than k only
// when fewer values are not NaN).
void top_k_candidates(std::vector<std::pair<float, int32_t>>& out, const float* x, int32_t n, int32_t k);

// ---- rows (MoE dispatch and combine, kernels/cpu/rows.cpp); rows are C floats ----
// out[i] = x[index[i]], or zeros where index[i] < 0.
void gather_rows(float* out, const float* x, const int32_t* index, int64_t n, int64_t C);
// out[s] = sum over j < k of weight[s*k + j] * y[row[s*k + j]] (rows < 0 skipped; weight null: 1).
void combine_rows(float* out, const float* y, const int32_t* row, const float* weight, int64_t S, int k, int64_t C);
// combine_rows' backward: dweight[a] = dout[s] . y[row[a]] and dy[row[a]] = weight[a] * dout[s] for a = s*k + j
// (row < 0: dweight 0); the rows of dy no assignment names are left as they are. Each row is named at most once.
void combine_rows_backward(float* dy, float* dweight, const float* dout, const float* y, const int32_t* row,
                           const float* weight, int64_t S, int k, int64_t C);

// ---- element-wise ----
void add(float* out, const float* a, const float* b, size_t n);      // out = a + b (out may alias a or b)
void add_inplace(float* y, const float* x, size_t n);                // y += x
void scale_inplace(float* y, float s, size_t n);                     // y *= s
double sum_squares(const float* x, size_t n);                        // sum of x^2 in double precision

// ---- fused classifier: tied LM head + softmax + cross-entropy ----
// For rows i < N: logits_i = x_i @ wte^T (wte is [V,C]), loss_i = logsumexp(logits_i) - logits_i[target_i].
// Returns the sum of loss_i over rows whose target is >= 0 (a target of -1 is ignored).
// If dx is not null: dx[N,C] = grad_scale * dL/dx (written) and dwte[V,C] += grad_scale * dL/dwte, where
// L = sum of loss_i. The logits are never materialised for all rows at once: rows are processed in chunks
// through scratch, which must hold classifier_scratch_floats(N, V) floats. losses[N] (optional) gets loss_i.
size_t classifier_scratch_floats(int N, int V);
double classifier_forward_backward(float* dx, float* dwte, float* losses, const float* x, const float* wte,
                                   const int32_t* targets, float grad_scale, float* scratch, int N, int C, int V);
// logits[N,V] = x @ wte^T (for inference and evaluation of full distributions)
void logits_forward(float* logits, const float* x, const float* wte, int N, int C, int V);
// The same head a slice of wte at a time (for weights that are never whole: Note [Sliced head] in gpt2.cpp).
// w holds rows [row_begin, row_begin + rows) of wte. logits_rows_forward writes those columns of logits[N,V];
// softmax_xent_rows then returns the loss sum as classifier_forward_backward does and, with want_grad, turns the
// logits into grad_scale * (softmax - onehot) in place (rows with target -1 become 0); classifier_rows_backward
// adds the slice's share: dx[N,C] += dlogits[:, slice] @ w and dw[rows,C] += dlogits[:, slice]^T @ x.
void logits_rows_forward(float* logits, const float* x, const float* w, int N, int C, int V, int row_begin, int rows);
double softmax_xent_rows(float* logits, float* losses, const int32_t* targets, bool want_grad, float grad_scale,
                         int N, int V);
void classifier_rows_backward(float* dx, float* dw, const float* dlogits, const float* x, const float* w, int N,
                              int C, int V, int row_begin, int rows);
// The vocabulary-parallel cross-entropy (Megatron) over logits[N,Vl], columns [begin, begin + Vl) of the whole
// logits, in the passes between which the caller all-reduces stats[3,N] over the group: vocab_xent_max writes
// row 0 (the local row maximum: max-reduce it); vocab_xent_sums writes rows 1 and 2 (the sum of exp(logit - max)
// and the target's logit where this rank holds it, else 0: sum-reduce them); vocab_xent_finish returns the loss
// sum over rows whose target is >= 0 and, with want_grad, turns the logits into grad_scale * (softmax - onehot)
// in place (rows with target -1 become 0).
void vocab_xent_max(const float* logits, float* stats, int N, int V);
void vocab_xent_sums(const float* logits, float* stats, const int32_t* targets, int N, int V, int begin);
double vocab_xent_finish(float* logits, const float* stats, const int32_t* targets, bool want_grad,
                         float grad_scale, int N, int V, int begin);
// The vocabulary-parallel embedding's rows: out[i] = table[ids[i] - begin] when that row is this rank's, else 0;
// and backward, dtable[ids[i] - begin] += dx[i] for those rows.
void vocab_rows_forward(float* out, const float* table, const int32_t* ids, int N, int C, int begin, int rows);
void vocab_rows_backward(float* dtable, const float* dx, const int32_t* ids, int N, int C, int begin, int rows);

// ---- optimizer ----
struct AdamParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool adam_w_mode = true;       // true: decoupled decay (AdamW); false: L2 added to the gradient (Adam)
  bool bias_correction = true;
  int64_t step = 1;              // 1-based step number, used for bias correction
};
// One Adam/AdamW step over n elements, DeepSpeed CPU-Adam semantics:
//   g = grad * grad_scale (+ weight_decay * param when !adam_w_mode)
//   m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g*g
//   bc1 = 1 - b1^step ; bc2 = 1 - b2^step (both 1 without bias_correction)
//   param -= lr * weight_decay * param (adam_w_mode) ; param -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
// AVX2 body with a scalar tail; parallel over OpenMP.
void adamw_step(float* param, const float* grad, float* m, float* v, size_t n, const AdamParams& p,
                float grad_scale = 1.0f);
// Mixed precision's step in one pass (DeepSpeed's CPU Adam with its 16-bit parameter copy): fp32 master, m and v
// updated as adamw_step does from a gradient stored in `grad_dtype` (f32, bf16 or f16; widened in registers), and
// the new master rounded to `param_dtype` (bf16 or f16, round to nearest even) into `param`. Reads 12 bytes plus
// the gradient's and writes 12 plus the parameter's per element; the same bits as widening the gradient, calling
// adamw_step and converting the master. AVX-512 body where the CPU has it (DS_CPU_ISA=avx2 forces AVX2).
void adamw_step_mixed(float* master, const void* grad, DType grad_dtype, float* m, float* v, void* param,
                      DType param_dtype, size_t n, const AdamParams& p, float grad_scale = 1.0f);
// The step's per-call scalars (kernels/adam_coeffs.h), which every backend's Adam kernel uses.
using kernels::AdamCoeffs;
AdamCoeffs adam_coeffs(const AdamParams& p, float grad_scale);

// LAMB with DeepSpeed's FusedLamb semantics (csrc/lamb/fused_lamb_cuda_kernel.cu), one parameter tensor at a time:
//   g = grad * grad_scale ; m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g*g          (lamb_moments)
//   u = m / (sqrt(v) + eps) + weight_decay * param   (eps inside the sqrt with eps_inside_sqrt)
//   coeff = clamp(|param| / |u|, min_coeff, max_coeff), 1 when either norm is 0      (lamb_coefficient)
//   param -= step_size * coeff * u, step_size = lr * sqrt(bc2) / bc1 (lr without bias_correction)  (lamb_apply)
// The trust ratio's norms use the moments as they are (bias correction lives in step_size only), as FusedLamb's.
struct LambParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool bias_correction = true;
  bool eps_inside_sqrt = false;
  float max_coeff = 10.0f;
  float min_coeff = 0.01f;
  int64_t step = 1;  // 1-based
};
void lamb_moments(const float* grad, float* m, float* v, size_t n, const LambParams& p, float grad_scale);
// Sum of u^2 over n elements, in fixed 64K-element blocks added in order (deterministic, as sum_squares).
double lamb_update_sum_squares(const float* param, const float* m, const float* v, size_t n, const LambParams& p);
float lamb_coefficient(double param_sum_squares, double update_sum_squares, const LambParams& p);
float lamb_step_size(const LambParams& p);
// param -= step * u, with step = lamb_step_size * lamb_coefficient.
void lamb_apply(float* param, const float* m, const float* v, size_t n, const LambParams& p, float step);

// ---- communication compression (compress.cpp) ----
// 1-bit compression with error feedback, as DeepSpeed's compressed_allreduce does it, over n elements (n a multiple
// of 8) in blocks of `block` elements (a multiple of 8; the last block shorter): the signs packed 8 to a byte
// (element i is bit i % 8 of byte i / 8, set when the element is >= 0, so 0 counts as +1 and NaN as -1) and one
// scale per block, ||x_block||_2 / sqrt(block length), that makes scale * sign(x) keep the block's L2 norm.
// onebit_compress first adds the carried error into x (x += error), then packs x, writes ceil(n / block) scales
// and leaves in error what the compressed form misses (error = x - scale * sign(x)). AVX2; blocks in parallel.
void onebit_compress(float* x, float* error, size_t n, size_t block, uint8_t* bits, float* scales);
// out[i] = scale_mul * scales[i / block] * sign_i (accumulate: out[i] += ...) for the n elements packed in bits.
void onebit_decompress(const uint8_t* bits, size_t n, size_t block, const float* scales, float scale_mul, float* out,
                       bool accumulate);

// The compressed optimizers' elementwise passes (1-bit Adam, 0/1 Adam; compress.cpp), fp32, n elements:
//   momentum_update:   m = b1 * m + (1 - b1) * grad * grad_scale
//   frozen_adam_apply: param -= lr * (m / (sqrt(max(v, m^2)) + eps) + weight_decay * param)  (the variance floor:
//                      zero/compressed_adam.h)
//   local_steps_delta: delta = (param - base) * (sqrt(v) + eps)   (0/1 Adam's local steps since `base`, as momentum)
//   local_steps_apply: m = -avg / lrs; param = base + avg / (sqrt(v) + eps); base = param   (the averaged steps)
void momentum_update(float* m, const float* grad, size_t n, float beta1, float grad_scale);
void frozen_adam_apply(float* param, const float* m, const float* v, size_t n, float lr, float eps,
                       float weight_decay);
void local_steps_delta(float* delta, const float* param, const float* base, const float* v, size_t n, float eps);
void local_steps_apply(float* param, float* m, const float* v, float* base, const float* avg, size_t n, float eps,
                       float lrs);

// Symmetric block quantization (ZeRO++'s quantized collectives; compress.cpp): n elements in blocks of `block`
// (the last one shorter), each block with one fp32 scale max|x| / qmax (qmax = 127 for 8 bits, 7 for 4 bits; 1 for a
// block of zeros) and values x / scale rounded half away from zero, within [-qmax, qmax]. 8 bits: one int8 per
// element; 4 bits: two per byte, element 2i in the low nibble (ceil(n/2) bytes; block must be even).
// dequantize_blocks writes (or, accumulating, adds) q * scale.
void quantize_blocks(const float* x, size_t n, int bits, size_t block, uint8_t* q, float* scales);
void dequantize_blocks(const uint8_t* q, const float* scales, size_t n, int bits, size_t block, float* out,
                       bool accumulate);

// ---- 16-bit storage conversion: core/convert.h (Tensor::copy_from uses them), here under their kernel names ----
using ds::bf16_to_f32;
using ds::f16_to_f32;
using ds::f32_to_bf16;
using ds::f32_to_f16;
using ds::from_f32;
using ds::to_f32;

}  // namespace ds::cpu
