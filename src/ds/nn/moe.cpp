// The MoE layer: gate, dispatch to the experts over the expert-parallel group, experts, combine; and backward.
#include "ds/nn/moe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ds/core/rng.h"
#include "ds/ops/ops.h"

namespace ds::nn {

void MoeStats::add(int layer, const Routing& r) {
  if (routed.size() <= static_cast<size_t>(layer)) routed.resize(static_cast<size_t>(layer) + 1);
  std::vector<int64_t>& counts = routed[static_cast<size_t>(layer)];
  if (counts.size() < r.routed.size()) counts.resize(r.routed.size(), 0);
  for (size_t e = 0; e < r.routed.size(); ++e) counts[e] += r.routed[e];
  assignments += r.assignments();
  dropped += r.dropped;
  aux_loss += r.l_aux;
  z_loss += r.z_loss;
}

void MoeStats::clear() { *this = MoeStats{}; }

// Note [MoE dispatch]
// GShard's dispatch without its one-hot tensors. The token side of a dispatch is one buffer of rows grouped by
// expert: expert e's rows [offset[e], offset[e] + block_rows[e]), its slot i at row offset[e] + i; experts are
// numbered so that rank r of the expert-parallel group holds experts [r·El, r·El + El), so the buffer is already in
// destination-rank order and one all-to-all(v) moves it. The expert side receives [src][local expert][rows].
//   capacity-based (drop_tokens, DeepSpeed's default): every expert has C slots (moe_gating.h: capacity), the
//     unfilled ones zero rows, so every block is C rows and no counts need exchanging; the experts compute on the
//     padding too, as DeepSpeed's do, and the padding's outputs are never combined.
//   dropless (drop_tokens false, MegaBlocks): an expert's block is exactly the assignments routed to it, the counts
//     are exchanged first (El int32 to each rank), then the rows by all-to-all-v: no padding, nothing dropped.
// Each local expert then runs once over all the rows sent to it (one GEMM per expert: the grouped GEMM), and the
// results go back by the reverse exchange. The combine adds each kept assignment's row times its weight. Backward
// retraces the same path: the output gradient times the weights goes to the experts, their input gradients come
// back and are summed per token, and the weights' gradients (dot products of the output gradient and the expert
// outputs) go to the gate. Traffic per layer and pass: four exchanges (two in forward, two in backward) of the rows
// sent to other ranks, C·El·(ep-1) rows per exchange capacity-based.
struct MoeLayer::Saved {
  Routing r;
  std::vector<size_t> send_counts;    // [ep] floats to each rank (token side)
  std::vector<size_t> recv_counts;    // [ep] floats from each rank (expert side)
  std::vector<int32_t> recv_rows;     // [ep * El] rows from rank src for local expert le
  Tensor row;                         // [S*k] i32: each assignment's token-side row, -1 when dropped
  Tensor weight;                      // [S*k] its combine weight
  Tensor noise;                       // [S, C] the gate input's jitter (Jitter policy, training)
  Tensor y_tok;                       // [rows, C] the experts' outputs, token side
  Tensor moe_out, mlp_out, coef;      // Residual-MoE: the two outputs and softmax(coefficient) [S, 2]
};

namespace {
uint64_t mix(uint64_t a, uint64_t b) {
  Rng r(a ^ (b * 0x9E3779B97F4A7C15ull));
  return r.next_u64();
}
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

MoeLayer::MoeLayer(ParameterStore& store, ParameterStore& experts_store, const std::string& name, int C,
                   const MoeOptions& options, ExpertParallelGroup* ep, int index)
    : Module(name),
      C_(C),
      options_(options),
      ep_(ep && ep->size() > 1 ? ep : nullptr),
      index_(index),
      first_expert_(0),
      gate_(store, name + ".gate", C, options.gate.num_experts, false),
      experts_owner_(name + ".experts") {
  const int E = options_.gate.num_experts, ranks = ep_ ? ep_->size() : 1;
  DS_CHECK_AS(ConfigError, E >= 1 && options_.gate.k >= 1 && options_.gate.k <= E, "[model] {}: top-{} routing "
              "needs at least {} experts, the layer has {}; lower k or add experts", name, options_.gate.k,
              options_.gate.k, E);
  DS_CHECK_AS(ConfigError, E % ranks == 0, "[model] {}: num_experts {} is not divisible by the expert-parallel size "
              "{} (DeepSpeed asserts the same); choose an ep_size that divides every layer's num_experts", name, E,
              ranks);
  if (options_.use_residual) {
    residual_ = std::make_unique<Mlp>(store, name, C);
    coefficient_ = std::make_unique<Linear>(store, name + ".coefficient", C, 2, true);
  }
  const int El = E / ranks;
  first_expert_ = (ep_ ? ep_->rank() : 0) * El;
  experts_store.begin_unit(name + ".experts", &experts_owner_);
  for (int e = first_expert_; e < first_expert_ + El; ++e)
    experts_.push_back(std::make_unique<Mlp>(experts_store, fmt::format("{}.experts.{}", name, e), C));
}

void MoeLayer::collect_parameters(std::vector<Parameter*>& out) const {
  gate_.collect_parameters(out);
  if (residual_) {
    residual_->collect_parameters(out);
    coefficient_->collect_parameters(out);
  }
  for (const auto& e : experts_) e->collect_parameters(out);
}

Tensor MoeLayer::exchange(Ctx& ctx, const Saved& s, const Tensor& rows, bool to_experts, bool in_scratch) {
  if (!ep_) return rows;
  const std::vector<size_t>& send = to_experts ? s.send_counts : s.recv_counts;
  const std::vector<size_t>& recv = to_experts ? s.recv_counts : s.send_counts;
  size_t total = 0;
  for (const size_t n : recv) total += n;
  const Shape shape{static_cast<int64_t>(total) / C_, C_};
  Tensor out = in_scratch ? ctx.scratch().alloc(shape) : ctx.act().alloc(shape);
  ep_->all_to_all_v(rows.data<float>(), send, out.data<float>(), recv);
  return out;
}

Tensor MoeLayer::run_experts(Ctx& ctx, Saved& s, const Tensor& recv, bool backward) {
  const int El = local_experts(), ranks = ep_ ? ep_->size() : 1;
  // Where the rows from rank src for local expert le start in the expert-side layout [src][le][rows].
  std::vector<int64_t> start(static_cast<size_t>(ranks * El));
  int64_t at = 0;
  for (size_t b = 0; b < start.size(); ++b) {
    start[b] = at;
    at += s.recv_rows[b];
  }
  Tensor out = backward ? ctx.scratch().alloc(recv.shape()) : ctx.act().alloc(recv.shape());
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(C_);
  for (int le = 0; le < El; ++le) {
    int64_t R = 0;
    for (int src = 0; src < ranks; ++src) R += s.recv_rows[size_t(src * El + le)];
    if (R == 0) continue;  // an expert no token reached this pass: nothing to compute, no gradient
    const size_t mark = ctx.scratch().mark();
    // The expert's rows in one block: on one rank they already are; over several, the ranks' blocks are joined.
    Tensor in;
    if (ranks == 1) {
      in = recv.slice_flat(start[size_t(le)] * C_, {R, C_});
    } else {
      in = backward ? ctx.scratch().alloc({R, C_}) : ctx.act().alloc({R, C_});
      int64_t row = 0;
      for (int src = 0; src < ranks; ++src) {
        const size_t b = size_t(src * El + le);
        std::memcpy(in.data<float>() + row * C_, recv.data<float>() + start[b] * C_,
                    row_bytes * size_t(s.recv_rows[b]));
        row += s.recv_rows[b];
      }
    }
    const Tensor res = backward ? experts_[size_t(le)]->backward(ctx, in) : experts_[size_t(le)]->forward(ctx, in);
    int64_t row = 0;
    for (int src = 0; src < ranks; ++src) {
      const size_t b = size_t(src * El + le);
      std::memcpy(out.data<float>() + start[b] * C_, res.data<float>() + row * C_,
                  row_bytes * size_t(s.recv_rows[b]));
      row += s.recv_rows[b];
    }
    if (backward) ctx.scratch().release(mark);
  }
  return out;
}

Tensor MoeLayer::forward(Ctx& ctx, const Tensor& x, Pass& pass) {
  const int64_t S = x.numel() / C_;
  const int E = num_experts(), El = local_experts(), ranks = ep_ ? ep_->size() : 1;
  Saved local;
  Saved& s = ctx.training ? ctx.stash<Saved>(this) : local;
  const uint64_t seed = mix(pass.noise_seed, static_cast<uint64_t>(index_) + 1);

  // Gate, in fp32 like DeepSpeed's TopKGate; Jitter multiplies its input by U(1 - 1e-2, 1 + 1e-2) in training.
  Tensor gate_in = x;
  if (ctx.training && options_.gate.noisy_gate_policy == NoisyGate::jitter) {
    constexpr float kJitter = 1e-2f;
    s.noise = ctx.act().alloc({S, C_});
    gate_in = ctx.act().alloc({S, C_});
    Rng rng(mix(seed, 0x4a));
    float* n = s.noise.data<float>();
    for (int64_t i = 0; i < S * C_; ++i) n[i] = 1.0f - kJitter + 2.0f * kJitter * rng.uniform();
    for (int64_t i = 0; i < S * C_; ++i) gate_in.data<float>()[i] = x.data<float>()[i] * n[i];
  }
  const Tensor logits = gate_.forward(ctx, gate_in);
  s.r = route_tokens(logits.data<float>(), S, options_.gate, ctx.training, seed);
  const Routing& r = s.r;
  if (pass.moe && !pass.recomputing) pass.moe->add(index_, r);

  // The dispatch plan (Note [MoE dispatch]).
  std::vector<int32_t> block_rows(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e)
    block_rows[size_t(e)] = static_cast<int32_t>(r.capacity >= 0 ? r.capacity : r.rows[size_t(e)]);
  std::vector<int64_t> offset(static_cast<size_t>(E) + 1, 0);  // token-side rows of each expert
  for (int e = 0; e < E; ++e) offset[size_t(e) + 1] = offset[size_t(e)] + block_rows[size_t(e)];
  s.recv_rows.assign(static_cast<size_t>(ranks * El), static_cast<int32_t>(r.capacity));
  if (r.capacity < 0) {
    if (ep_) {
      ep_->all_to_all_counts(block_rows.data(), s.recv_rows.data(), static_cast<size_t>(El));
    } else {
      s.recv_rows = block_rows;
    }
  }
  s.send_counts.assign(static_cast<size_t>(ranks), 0);
  s.recv_counts.assign(static_cast<size_t>(ranks), 0);
  for (int rank = 0; rank < ranks; ++rank)
    for (int le = 0; le < El; ++le) {
      s.send_counts[size_t(rank)] += static_cast<size_t>(block_rows[size_t(rank * El + le)]) * size_t(C_);
      s.recv_counts[size_t(rank)] += static_cast<size_t>(s.recv_rows[size_t(rank * El + le)]) * size_t(C_);
    }

  // Each assignment's token-side row, and each row's token (padding: -1, a zero row).
  const int64_t rows = offset.back(), assignments = r.assignments();
  const int k = r.k;
  s.row = ctx.act().alloc({assignments}, DType::i32);
  s.weight = ctx.act().alloc({assignments});
  const size_t mark = ctx.scratch().mark();
  Tensor token = ctx.scratch().alloc({rows}, DType::i32);
  std::fill_n(token.data<int32_t>(), rows, -1);
  for (int64_t a = 0; a < assignments; ++a) {
    const bool kept = r.slot[size_t(a)] >= 0;
    const int64_t row = kept ? offset[size_t(r.expert[size_t(a)])] + r.slot[size_t(a)] : -1;
    s.row.data<int32_t>()[a] = static_cast<int32_t>(row);
    s.weight.data<float>()[a] = r.weight[size_t(a)];
    if (kept) token.data<int32_t>()[row] = static_cast<int32_t>(a / k);
  }
  Tensor send = ctx.act().alloc({rows, C_});
  ops::gather_rows(send, x.view({S, C_}), token);
  ctx.scratch().release(mark);
  const Tensor recv = exchange(ctx, s, send, true, false);
  const Tensor y_exp = run_experts(ctx, s, recv, false);
  s.y_tok = exchange(ctx, s, y_exp, false, false);

  Tensor out = ctx.act().alloc({S, C_});
  ops::combine_rows(out, s.y_tok, s.row, s.weight);
  if (!residual_) return out;
  // Residual-MoE: out = moe(x) * p0 + mlp(x) * p1, p = softmax(coefficient(x)) per token.
  s.moe_out = out;
  s.mlp_out = residual_->forward(ctx, x);
  s.coef = coefficient_->forward(ctx, x);
  Tensor mixed = ctx.act().alloc({S, C_});
  for (int64_t t = 0; t < S; ++t) {
    float* p = s.coef.data<float>() + t * 2;
    const float m = std::max(p[0], p[1]);
    const float e0 = std::exp(p[0] - m), e1 = std::exp(p[1] - m);
    p[0] = e0 / (e0 + e1), p[1] = e1 / (e0 + e1);
    const float* a = out.data<float>() + t * C_;
    const float* b = s.mlp_out.data<float>() + t * C_;
    float* o = mixed.data<float>() + t * C_;
    for (int c = 0; c < C_; ++c) o[c] = a[c] * p[0] + b[c] * p[1];
  }
  return mixed;
}

Tensor MoeLayer::backward(Ctx& ctx, const Tensor& dy, Pass& pass) {
  Saved& s = ctx.stash<Saved>(this);
  const Routing& r = s.r;
  const int64_t S = r.S;
  Tensor dmoe = dy;
  Tensor dx_residual;
  if (residual_) {
    dmoe = ctx.scratch().alloc({S, C_});
    Tensor dmlp = ctx.scratch().alloc({S, C_});
    Tensor dcoef = ctx.scratch().alloc({S, 2});
    for (int64_t t = 0; t < S; ++t) {
      const float* p = s.coef.data<float>() + t * 2;
      const float* g = dy.data<float>() + t * C_;
      for (int c = 0; c < C_; ++c) {
        dmoe.data<float>()[t * C_ + c] = g[c] * p[0];
        dmlp.data<float>()[t * C_ + c] = g[c] * p[1];
      }
      const float d0 = dot(g, s.moe_out.data<float>() + t * C_, C_), d1 = dot(g, s.mlp_out.data<float>() + t * C_, C_);
      const float mean = p[0] * d0 + p[1] * d1;
      dcoef.data<float>()[t * 2] = p[0] * (d0 - mean);
      dcoef.data<float>()[t * 2 + 1] = p[1] * (d1 - mean);
    }
    dx_residual = residual_->backward(ctx, dmlp);
    ops::add_inplace(dx_residual, coefficient_->backward(ctx, dcoef));
  }

  // The combine's backward: each kept assignment's weight gradient, and its row's gradient w * dout (padding
  // rows: zero).
  Tensor dweight = ctx.scratch().alloc({r.assignments()});
  Tensor dy_tok = ctx.scratch().alloc(s.y_tok.shape());
  if (r.capacity >= 0) dy_tok.zero_();  // dropless: every row is an assignment's
  ops::combine_rows_backward(dy_tok, dweight, dmoe.view({S, C_}), s.y_tok, s.row, s.weight);
  const Tensor dy_exp = exchange(ctx, s, dy_tok, true, true);
  const Tensor dx_exp = run_experts(ctx, s, dy_exp, true);
  const Tensor dx_tok = exchange(ctx, s, dx_exp, false, true);
  Tensor dx = ctx.scratch().alloc({S, C_});
  ops::combine_rows(dx, dx_tok, s.row, Tensor());

  // The gate: the weights' gradients plus the auxiliary losses' (each a mean already: scaled like the loss).
  Tensor dlogits = ctx.scratch().alloc({S, r.E});
  route_tokens_backward(r, dweight.data<float>(), static_cast<float>(pass.loss_term_scale * options_.aux_loss_coef),
                        static_cast<float>(pass.loss_term_scale * options_.z_loss_coef), dlogits.data<float>());
  Tensor dgate_in = gate_.backward(ctx, dlogits);
  if (s.noise.defined()) {
    float* d = dgate_in.data<float>();
    const float* n = s.noise.data<float>();
    for (int64_t i = 0; i < S * C_; ++i) d[i] *= n[i];
  }
  ops::add_inplace(dx, dgate_in);
  if (dx_residual.defined()) ops::add_inplace(dx, dx_residual);
  return dx;
}

}  // namespace ds::nn
