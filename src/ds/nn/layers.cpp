// Forward/backward glue from modules to the ops layer (ops/ops.h). Activations are [rows, C] fp32 tensors.
#include "ds/nn/layers.h"

#include "ds/nn/moe.h"
#include "ds/ops/ops.h"

namespace ds::nn {
namespace {
int rows_of(const Tensor& x, int cols, const char* who) {
  DS_CHECK_AS(ShapeError, x.ndim() >= 1 && x.numel() % cols == 0, "[{}] expected activations with {} columns, got {}",
              who, cols, x.str());
  return static_cast<int>(x.numel() / cols);
}
}  // namespace

// ---- Linear ----
Linear::Linear(ParameterStore& store, const std::string& name, int in, int out, bool bias)
    : Module(name), in_(in), out_(out) {
  weight_ = store.add(name + ".weight", {in, out});
  if (bias) bias_ = store.add(name + ".bias", {out});
}

Tensor Linear::forward(Ctx& ctx, const Tensor& x) {
  const int N = rows_of(x, in_, "linear");
  Tensor y = ctx.act().alloc({N, out_});
  ops::linear_forward(y, x.view({N, in_}), weight_->data, bias_ ? bias_->data : Tensor());
  if (ctx.training) ctx.saved(this) = {x};
  return y;
}

Tensor Linear::backward(Ctx& ctx, const Tensor& dy) {
  const int N = rows_of(dy, out_, "linear");
  const Tensor x = ctx.saved(this).at(0).view({N, in_});
  Tensor dx = ctx.scratch().alloc({N, in_});
  if (!ctx.defer_weight_grads) {
    ops::linear_backward(dx, weight_->grad, bias_ ? bias_->grad : Tensor(), dy.view({N, out_}), x, weight_->data);
    return dx;
  }
  ops::linear_backward(dx, Tensor(), Tensor(), dy.view({N, out_}), x, weight_->data);
  Tensor kept = ctx.act().alloc({N, out_});
  kept.copy_from(dy.view({N, out_}));
  ctx.defer([this, x, kept] {
    ops::linear_backward(Tensor(), weight_->grad, bias_ ? bias_->grad : Tensor(), kept, x, weight_->data);
  });
  return dx;
}

void Linear::collect_parameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_);
  if (bias_) out.push_back(bias_);
}

const LinearFactory& dense_linear() {
  static const LinearFactory factory = [](ParameterStore& store, const std::string& name, int in, int out, bool bias,
                                          LinearKind, int) { return std::make_unique<Linear>(store, name, in, out, bias); };
  return factory;
}

// ---- LayerNorm ----
LayerNorm::LayerNorm(ParameterStore& store, const std::string& name, int C) : Module(name), C_(C) {
  weight_ = store.add(name + ".weight", {C});
  bias_ = store.add(name + ".bias", {C});
}

Tensor LayerNorm::forward(Ctx& ctx, const Tensor& x) {
  const int N = rows_of(x, C_, "layernorm");
  Tensor y = ctx.act().alloc({N, C_});
  Tensor stats = ctx.act().alloc({2, N});
  ops::layernorm_forward(y, stats, x.view({N, C_}), weight_->data, bias_->data);
  if (ctx.training) ctx.saved(this) = {x, stats};
  return y;
}

Tensor LayerNorm::backward(Ctx& ctx, const Tensor& dy) {
  auto& s = ctx.saved(this);
  const int N = rows_of(dy, C_, "layernorm");
  const Tensor x = s.at(0).view({N, C_});
  const Tensor stats = s.at(1);
  Tensor dx = ctx.scratch().alloc({N, C_});
  if (!ctx.defer_weight_grads) {
    ops::layernorm_backward(dx, weight_->grad, bias_->grad, dy.view({N, C_}), x, weight_->data, stats);
    return dx;
  }
  ops::layernorm_backward(dx, Tensor(), Tensor(), dy.view({N, C_}), x, weight_->data, stats);
  Tensor kept = ctx.act().alloc({N, C_});
  kept.copy_from(dy.view({N, C_}));
  ctx.defer([this, x, stats, kept] {
    ops::layernorm_backward(Tensor(), weight_->grad, bias_->grad, kept, x, weight_->data, stats);
  });
  return dx;
}

void LayerNorm::collect_parameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_);
  out.push_back(bias_);
}

// ---- CausalSelfAttention ----
CausalSelfAttention::CausalSelfAttention(ParameterStore& store, const std::string& name, int C, int n_head,
                                         const LinearFactory& linear)
    : Module(name),
      c_attn_(linear(store, name + ".c_attn", C, 3 * C, true, LinearKind::column, 3)),
      c_proj_(linear(store, name + ".c_proj", C, C, true, LinearKind::row, 1)) {
  DS_CHECK_AS(ConfigError, n_head > 0 && C % n_head == 0,
              "[model] n_embd ({}) must be divisible by n_head ({})", C, n_head);
  C_ = c_attn_->out_features() / 3;
  DS_ASSERT(C_ * n_head % C == 0, "{}: {} of {} columns do not hold whole heads", name, C_, C);
  NH_ = C_ * n_head / C;
}

Tensor CausalSelfAttention::forward(Ctx& ctx, const Tensor& x, int B, int T) {
  Tensor qkv = c_attn_->forward(ctx, x);
  Tensor y = ctx.act().alloc({B * T, C_});
  Tensor att = ctx.act().alloc({B, NH_, T, T});
  ops::attention_forward(y, att, qkv, B, T, NH_);
  if (ctx.training) ctx.saved(this) = {qkv, att};
  return c_proj_->forward(ctx, y);
}

Tensor CausalSelfAttention::backward(Ctx& ctx, const Tensor& dy, int B, int T) {
  Tensor dyatt = c_proj_->backward(ctx, dy);
  auto& s = ctx.saved(this);
  Tensor dqkv = ctx.scratch().alloc({B * T, 3 * C_});
  Tensor scratch = ctx.scratch().alloc({ops::attention_backward_scratch(B, T, C_, NH_)});
  ops::attention_backward(dqkv, dyatt, s.at(0), s.at(1), scratch, B, T, NH_);
  return c_attn_->backward(ctx, dqkv);
}

void CausalSelfAttention::collect_parameters(std::vector<Parameter*>& out) const {
  c_attn_->collect_parameters(out);
  c_proj_->collect_parameters(out);
}

// ---- Mlp ----
Mlp::Mlp(ParameterStore& store, const std::string& name, int C, const LinearFactory& linear)
    : Module(name),
      c_fc_(linear(store, name + ".c_fc", C, 4 * C, true, LinearKind::column, 1)),
      c_proj_(linear(store, name + ".c_proj", 4 * C, C, true, LinearKind::row, 1)) {}

Tensor Mlp::forward(Ctx& ctx, const Tensor& x) {
  Tensor h = c_fc_->forward(ctx, x);
  Tensor g = ctx.act().alloc(h.shape());
  ops::gelu_forward(g, h);
  if (ctx.training) ctx.saved(this) = {h};
  return c_proj_->forward(ctx, g);
}

Tensor Mlp::backward(Ctx& ctx, const Tensor& dy) {
  Tensor dg = c_proj_->backward(ctx, dy);
  const Tensor& h = ctx.saved(this).at(0);
  ops::gelu_backward(dg, h, dg);
  return c_fc_->backward(ctx, dg);
}

void Mlp::collect_parameters(std::vector<Parameter*>& out) const {
  c_fc_->collect_parameters(out);
  c_proj_->collect_parameters(out);
}

// ---- TransformerBlock ----
TransformerBlock::TransformerBlock(ParameterStore& store, const std::string& name, int C, int n_head,
                                   const LinearFactory& linear, const MoeBlockArgs* moe)
    : Block(name),
      ln_1_(store, name + ".ln_1", C),
      attn_(store, name + ".attn", C, n_head, linear),
      ln_2_(store, name + ".ln_2", C) {
  if (moe) {
    moe_ = std::make_unique<MoeLayer>(store, *moe->experts_store, name + ".mlp", C, moe->options, moe->ep,
                                      moe->index);
  } else {
    mlp_ = std::make_unique<Mlp>(store, name + ".mlp", C, linear);
  }
}

TransformerBlock::~TransformerBlock() = default;

std::vector<const Module*> TransformerBlock::units() const {
  if (moe_) return {this, moe_->experts_unit()};
  return {this};
}

Tensor TransformerBlock::forward(Ctx& ctx, const Tensor& x, Pass& pass) {
  const int B = pass.B, T = pass.T;
  Tensor a = attn_.forward(ctx, ln_1_.forward(ctx, x), B, T);
  Tensor r1 = ctx.act().alloc(x.shape());
  ops::add(r1, x, a);
  const Tensor h = ln_2_.forward(ctx, r1);
  Tensor m = moe_ ? moe_->forward(ctx, h, pass) : mlp_->forward(ctx, h);
  Tensor out = ctx.act().alloc(x.shape());
  ops::add(out, r1, m);
  return out;
}

Tensor TransformerBlock::backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor dx) {
  const int B = pass.B, T = pass.T;
  DS_ASSERT(dx.numel() == dy.numel() && dx.raw() != dy.raw());
  const size_t mark = ctx.scratch().mark();
  // out = r1 + mlp(ln_2(r1))  =>  dr1 = dy + ln_2'(mlp'(dy))
  Tensor dr1 = ln_2_.backward(ctx, moe_ ? moe_->backward(ctx, dy, pass) : mlp_->backward(ctx, dy));
  ops::add_inplace(dr1, dy);
  // r1 = x + attn(ln_1(x))  =>  dx = dr1 + ln_1'(attn'(dr1))
  Tensor dxa = ln_1_.backward(ctx, attn_.backward(ctx, dr1, B, T));
  ops::add(dx, dr1, dxa);
  ctx.scratch().release(mark);
  return dx;
}

void TransformerBlock::collect_parameters(std::vector<Parameter*>& out) const {
  ln_1_.collect_parameters(out);
  attn_.collect_parameters(out);
  ln_2_.collect_parameters(out);
  if (moe_) {
    moe_->collect_parameters(out);
  } else {
    mlp_->collect_parameters(out);
  }
}

}  // namespace ds::nn
