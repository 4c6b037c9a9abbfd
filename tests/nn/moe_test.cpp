// MoE routing against a reference written the way DeepSpeed's sharded_moe.py computes it (dense one-hot masks,
// cumulative sums, renormalised gates), its backward and the whole layer's against finite differences, the
// capacity formula, RTS and noise with fixed seeds, and the dropless path against capacity-based routing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <optional>

#include "common/random_values.h"
#include "ds/nn/moe.h"

using namespace ds;
using namespace ds::nn;

namespace {

// ---- the reference: DeepSpeed's gating in dense [S, E] masks ----
struct Ref {
  std::vector<int> expert, slot;  // [S*k], slot -1 dropped
  std::vector<float> weight;
  double l_aux = 0;
};

std::vector<double> softmax_rows(const std::vector<float>& logits, int S, int E) {
  std::vector<double> g(logits.size());
  for (int s = 0; s < S; ++s) {
    double m = -1e30, sum = 0;
    for (int e = 0; e < E; ++e) m = std::max(m, double(logits[s * E + e]));
    for (int e = 0; e < E; ++e) sum += g[s * E + e] = std::exp(logits[s * E + e] - m);
    for (int e = 0; e < E; ++e) g[s * E + e] /= sum;
  }
  return g;
}

// Top-1 and top-2 with positional dropping (top1gating without RTS, top2gating without sampling).
Ref reference_top12(const std::vector<float>& logits, int S, int E, int k, int64_t C) {
  const std::vector<double> gates = softmax_rows(logits, S, E);
  std::vector<int> mask1(S * E, 0), mask2(S * E, 0);
  std::vector<int> idx1(S), idx2(S, -1);
  for (int s = 0; s < S; ++s) {
    idx1[s] = int(std::max_element(gates.begin() + s * E, gates.begin() + s * E + E) - (gates.begin() + s * E));
    mask1[s * E + idx1[s]] = 1;
    if (k == 2) {
      int best = -1;
      for (int e = 0; e < E; ++e)
        if (e != idx1[s] && (best < 0 || logits[s * E + e] > logits[s * E + best])) best = e;
      idx2[s] = best;
      mask2[s * E + best] = 1;
    }
  }
  Ref r;
  for (int e = 0; e < E; ++e) {
    double me = 0, ce = 0;
    for (int s = 0; s < S; ++s) me += gates[s * E + e], ce += mask1[s * E + e];
    r.l_aux += me / S * ce / S;
  }
  r.l_aux *= E;
  // locations = cumsum(mask, dim=0) - 1; the second choices after all first ones.
  std::vector<int> loc1(S * E), loc2(S * E), sum1(E, 0);
  for (int e = 0; e < E; ++e) {
    int c1 = 0, c2 = 0;
    for (int s = 0; s < S; ++s) {
      c1 += mask1[s * E + e];
      loc1[s * E + e] = c1 - 1;
    }
    sum1[e] = c1;
    for (int s = 0; s < S; ++s) {
      c2 += mask2[s * E + e];
      loc2[s * E + e] = c2 - 1 + sum1[e];
    }
  }
  r.expert.assign(S * k, 0), r.slot.assign(S * k, -1), r.weight.assign(S * k, 0.0f);
  for (int s = 0; s < S; ++s) {
    const int e1 = idx1[s];
    const bool keep1 = loc1[s * E + e1] < C;
    double g1 = keep1 ? gates[s * E + e1] : 0.0, g2 = 0;
    r.expert[s * k] = e1;
    if (keep1) r.slot[s * k] = loc1[s * E + e1];
    if (k == 1) {
      r.weight[s] = float(g1);
      continue;
    }
    const int e2 = idx2[s];
    const bool keep2 = loc2[s * E + e2] < C;
    if (keep2) g2 = gates[s * E + e2];
    r.expert[s * k + 1] = e2;
    if (keep2) r.slot[s * k + 1] = loc2[s * E + e2];
    const double denom = std::max(g1 + g2, double(FLT_EPSILON));
    r.weight[s * k] = float(g1 / denom), r.weight[s * k + 1] = float(g2 / denom);
  }
  return r;
}

// topkgating with the 'probs' drop policy: each expert keeps its C assignments of highest gate value.
Ref reference_topk(const std::vector<float>& logits, int S, int E, int k, int64_t C) {
  const std::vector<double> gates = softmax_rows(logits, S, E);
  std::vector<int> mask(S * E, 0);
  Ref r;
  r.expert.assign(S * k, 0);
  for (int s = 0; s < S; ++s) {
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[s * E + a] > logits[s * E + b]; });
    for (int j = 0; j < k; ++j) mask[s * E + order[j]] = 1, r.expert[s * k + j] = order[j];
  }
  for (int e = 0; e < E; ++e) {
    double me = 0, ce = 0;
    for (int s = 0; s < S; ++s) me += gates[s * E + e], ce += mask[s * E + e];
    r.l_aux += me / S * ce / S;
  }
  r.l_aux *= double(E) / k;
  std::vector<int> keep(S * E, 0);
  for (int e = 0; e < E; ++e) {
    std::vector<int> tokens;
    for (int s = 0; s < S; ++s)
      if (mask[s * E + e]) tokens.push_back(s);
    std::sort(tokens.begin(), tokens.end(), [&](int a, int b) { return gates[a * E + e] > gates[b * E + e]; });
    for (size_t i = 0; i < tokens.size() && int64_t(i) < C; ++i) keep[tokens[i] * E + e] = 1;
  }
  r.slot.assign(S * k, -1), r.weight.assign(S * k, 0.0f);
  for (int s = 0; s < S; ++s) {
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += gates[s * E + e] * keep[s * E + e];
    const double denom = std::max(sum, double(FLT_EPSILON));
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[s * k + j];
      if (!keep[s * E + e]) continue;
      int loc = 0;  // cumsum(new_mask, dim=0) - 1
      for (int t = 0; t < s; ++t) loc += keep[t * E + e];
      r.slot[s * k + j] = loc;
      r.weight[s * k + j] = float(gates[s * E + e] / denom);
    }
  }
  return r;
}

void expect_same(const Routing& got, const Ref& want) {
  ASSERT_EQ(got.expert.size(), want.expert.size());
  for (size_t a = 0; a < want.expert.size(); ++a) {
    EXPECT_EQ(got.expert[a], want.expert[a]) << a;
    EXPECT_EQ(got.slot[a], want.slot[a]) << a;
    EXPECT_NEAR(got.weight[a], want.weight[a], 1e-6) << a;
  }
  EXPECT_NEAR(got.l_aux, want.l_aux, 1e-6);
}

GateOptions gate(int E, int k, double cf) {
  GateOptions o;
  o.num_experts = E, o.k = k, o.capacity_factor = cf, o.use_rts = false, o.top2_2nd_expert_sampling = false;
  return o;
}

}  // namespace

TEST(MoeGating, CapacityIsDeepSpeedsFormula) {
  EXPECT_EQ(expert_capacity(64, 8, 1.0, 1, 4), 8);    // ceil(64/8 * 1.0)
  EXPECT_EQ(expert_capacity(64, 8, 1.25, 2, 4), 20);  // ceil(64/8 * 2.5)
  EXPECT_EQ(expert_capacity(10, 8, 1.0, 1, 4), 4);    // ceil(1.25) = 2, floored at min_capacity
  EXPECT_EQ(expert_capacity(30, 4, 1.0, 3, 0), 23);   // ceil(22.5)
}

TEST(MoeGating, TopOneAndTopTwoMatchDeepSpeedsMaskFormulation) {
  const int S = 48, E = 4;
  for (const int k : {1, 2}) {
    for (const double cf : {0.5, 1.0, 4.0}) {  // heavy drops, some, none
      const std::vector<float> logits = ds::testing::randn(S * E, 100 + k, 1.5f);
      const Routing r = route_tokens(logits.data(), S, gate(E, k, cf), true, 0);
      const int64_t C = expert_capacity(S, E, cf, k, 4);
      EXPECT_EQ(r.capacity, C);
      SCOPED_TRACE(::testing::Message() << "k " << k << " cf " << cf);
      expect_same(r, reference_top12(logits, S, E, k, C));
      int64_t kept = 0;
      for (int e = 0; e < E; ++e) kept += r.rows[e];
      EXPECT_EQ(kept + r.dropped, int64_t(S) * k);
      if (cf == 0.5) {
        EXPECT_GT(r.dropped, 0);
      }
      if (cf == 4.0) {
        EXPECT_EQ(r.dropped, 0);
      }
    }
  }
}

TEST(MoeGating, TopKKeepsTheHighestGatesPerExpert) {
  const int S = 40, E = 8, k = 3;
  const std::vector<float> logits = ds::testing::randn(S * E, 7, 1.0f);
  for (const double cf : {0.4, 2.0}) {
    const Routing r = route_tokens(logits.data(), S, gate(E, k, cf), true, 0);
    SCOPED_TRACE(cf);
    expect_same(r, reference_topk(logits, S, E, k, expert_capacity(S, E, cf, k, 4)));
  }
}

TEST(MoeGating, DroplessKeepsEveryAssignmentAndMatchesAmpleCapacity) {
  const int S = 32, E = 4;
  const std::vector<float> logits = ds::testing::randn(S * E, 9, 2.0f);
  for (const int k : {1, 2, 3}) {
    GateOptions dropless = gate(E, k, 1.0);
    dropless.drop_tokens = false;
    const Routing a = route_tokens(logits.data(), S, dropless, true, 0);
    const Routing b = route_tokens(logits.data(), S, gate(E, k, 16.0), true, 0);  // capacity S*k: no drop
    EXPECT_EQ(a.capacity, -1);
    EXPECT_EQ(a.dropped, 0);
    EXPECT_EQ(a.expert, b.expert);
    EXPECT_EQ(a.slot, b.slot);
    EXPECT_EQ(a.weight, b.weight);
    EXPECT_EQ(a.rows, a.routed);
  }
}

TEST(MoeGating, RandomTokenSelectionDropsAtRandomButReproducibly) {
  // Every token prefers expert 0: capacity 4 of 32 tokens. Positional dropping keeps tokens 0-3; RTS keeps 4
  // tokens chosen by the seed.
  const int S = 32, E = 4;
  std::vector<float> logits(S * E, 0.0f);
  for (int s = 0; s < S; ++s) logits[s * E] = 3.0f;
  GateOptions o = gate(E, 1, 1.0);
  o.min_capacity = 0;
  const Routing positional = route_tokens(logits.data(), S, o, true, 0);
  for (int s = 0; s < S; ++s) EXPECT_EQ(positional.slot[s] >= 0, s < 8) << s;  // C = ceil(32/4) = 8
  o.use_rts = true;
  const Routing a = route_tokens(logits.data(), S, o, true, 11), b = route_tokens(logits.data(), S, o, true, 11),
                c = route_tokens(logits.data(), S, o, true, 12);
  EXPECT_EQ(a.slot, b.slot);
  EXPECT_NE(a.slot, c.slot);
  EXPECT_NE(a.slot, positional.slot);
  EXPECT_EQ(a.rows[0], 8);
  EXPECT_EQ(a.dropped, S - 8);
  // Kept tokens fill slots 0..7 in token order.
  int next = 0;
  for (int s = 0; s < S; ++s)
    if (a.slot[s] >= 0) {
      EXPECT_EQ(a.slot[s], next++);
    }
}

TEST(MoeGating, NoiseIsSeededAndOnlyInTraining) {
  const int S = 64, E = 8;
  const std::vector<float> logits = ds::testing::randn(S * E, 3, 0.3f);
  GateOptions o = gate(E, 1, 100.0);
  o.noisy_gate_policy = NoisyGate::rsample;
  const Routing clean = route_tokens(logits.data(), S, gate(E, 1, 100.0), true, 0);
  const Routing a = route_tokens(logits.data(), S, o, true, 5), b = route_tokens(logits.data(), S, o, true, 5);
  EXPECT_EQ(a.expert, b.expert);
  EXPECT_NE(a.expert, clean.expert);  // Gumbel noise on logits of scale 0.3 changes some choices
  EXPECT_EQ(route_tokens(logits.data(), S, o, false, 5).expert, clean.expert);
  GateOptions two = gate(E, 2, 100.0);
  two.top2_2nd_expert_sampling = true;
  const Routing t = route_tokens(logits.data(), S, two, true, 5);
  const Routing t_clean = route_tokens(logits.data(), S, gate(E, 2, 100.0), true, 5);
  for (int s = 0; s < S; ++s) EXPECT_EQ(t.expert[s * 2], t_clean.expert[s * 2]);  // the first choice is the argmax
  EXPECT_NE(t.expert, t_clean.expert);
}

TEST(MoeGating, BackwardMatchesFiniteDifferences) {
  const int S = 24, E = 6;
  for (const int k : {1, 2, 3}) {
    for (const double cf : {0.75, 8.0}) {
      GateOptions o = gate(E, k, cf);
      const std::vector<float> logits = ds::testing::randn(S * E, 40 + k, 1.0f);
      const std::vector<float> c = ds::testing::randn(size_t(S) * k, 50 + k);
      const float aux = 0.7f, zc = 0.3f;
      auto loss = [&](const std::vector<float>& l, Routing* out) {
        const Routing r = route_tokens(l.data(), S, o, true, 0);
        double sum = aux * r.l_aux + zc * r.z_loss;
        for (size_t a = 0; a < r.weight.size(); ++a) sum += double(c[a]) * r.weight[a];
        if (out) *out = r;
        return sum;
      };
      Routing r;
      loss(logits, &r);
      std::vector<float> dlogits(S * E);
      route_tokens_backward(r, c.data(), aux, zc, dlogits.data());
      int checked = 0;
      for (int i = 0; i < S * E; ++i) {
        std::vector<float> lp = logits, lm = logits;
        const float h = 2e-3f;
        lp[i] += h, lm[i] -= h;
        Routing rp, rm;
        const double fp = loss(lp, &rp), fm = loss(lm, &rm);
        if (rp.slot != r.slot || rm.slot != r.slot || rp.expert != r.expert || rm.expert != r.expert) continue;
        const double fd = (fp - fm) / (2 * h);
        EXPECT_NEAR(dlogits[i], fd, 2e-3 + 1e-2 * std::abs(fd)) << "k " << k << " cf " << cf << " i " << i;
        ++checked;
      }
      EXPECT_GT(checked, S * E * 3 / 4);
    }
  }
}

namespace {
struct LayerCase {
  int k = 1;
  double cf = 1.0;
  bool drop = true;
  bool residual = false;
};

// One MoE layer on one rank with random parameters: loss = sum(R * out) + aux terms; returns the loss, and with
// grads, dx and the parameter gradients (in collect_parameters order).
struct LayerRun {
  double loss = 0;
  std::vector<float> out, dx;
  std::vector<std::vector<float>> grads;
};

class OneLayer {
 public:
  static constexpr int C = 8, E = 4, S = 20;
  explicit OneLayer(const LayerCase& c) {
    opt_.gate = gate(E, c.k, c.cf);
    opt_.gate.drop_tokens = c.drop;
    opt_.use_residual = c.residual;
    opt_.aux_loss_coef = 0.5;
    opt_.z_loss_coef = 0.05;
    layer_ = std::make_unique<MoeLayer>(store_, experts_, "m", C, opt_, nullptr, 0);
    store_.materialize();
    experts_.materialize();
    layer_->collect_parameters(params_);
    uint64_t seed = 1;
    for (Parameter* p : params_) {
      const std::vector<float> v = ds::testing::randn(size_t(p->numel()), seed++, 0.4f);
      std::copy(v.begin(), v.end(), p->data.data<float>());
    }
    x_ = ds::testing::randn(S * C, 77);
    r_ = ds::testing::randn(S * C, 78);
  }
  std::vector<Parameter*>& params() { return params_; }
  std::vector<float>& x() { return x_; }

  LayerRun run(bool grads) {
    for (Parameter* p : params_) p->grad.zero_();
    Ctx ctx;
    ctx.reset();
    MoeStats stats;
    Pass pass;
    pass.moe = &stats;
    Tensor xt = ctx.act().alloc({S, C});
    std::copy(x_.begin(), x_.end(), xt.data<float>());
    Tensor y = layer_->forward(ctx, xt, pass);
    LayerRun out;
    out.out.assign(y.data<float>(), y.data<float>() + S * C);
    out.loss = opt_.aux_loss_coef * stats.aux_loss + opt_.z_loss_coef * stats.z_loss;
    for (int i = 0; i < S * C; ++i) out.loss += double(r_[i]) * out.out[i];
    if (!grads) return out;
    Tensor dy = ctx.scratch().alloc({S, C});
    std::copy(r_.begin(), r_.end(), dy.data<float>());
    Tensor dx = layer_->backward(ctx, dy, pass);
    out.dx.assign(dx.data<float>(), dx.data<float>() + S * C);
    for (Parameter* p : params_) out.grads.emplace_back(p->grad.data<float>(), p->grad.data<float>() + p->numel());
    return out;
  }

 private:
  MoeOptions opt_;
  ParameterStore store_, experts_;
  std::unique_ptr<MoeLayer> layer_;
  std::vector<Parameter*> params_;
  std::vector<float> x_, r_;
};

void check_layer_gradients(const LayerCase& c) {
  OneLayer layer(c);
  const LayerRun base = layer.run(true);
  const float h = 2e-3f;
  int checked = 0, kinks = 0;
  // The central difference, or nothing where the two one-sided differences disagree: a routing decision (an
  // argmax, a capacity cut) flipped within +-h, and the loss is not differentiable there.
  auto fd = [&](float* v) -> std::optional<double> {
    const float keep = *v;
    *v = keep + h;
    const double fp = layer.run(false).loss;
    *v = keep - h;
    const double fm = layer.run(false).loss;
    *v = keep;
    const double forward = (fp - base.loss) / h, backward = (base.loss - fm) / h;
    if (std::abs(forward - backward) > 0.05 + 0.1 * std::abs(forward + backward)) {
      ++kinks;
      return std::nullopt;
    }
    ++checked;
    return (fp - fm) / (2 * h);
  };
  // Inputs: a few entries of x; parameters: a few of each tensor.
  for (int i = 0; i < OneLayer::S * OneLayer::C; i += 13) {
    if (const auto want = fd(&layer.x()[i])) {
      EXPECT_NEAR(base.dx[i], *want, 5e-3 + 2e-2 * std::abs(*want)) << "dx " << i;
    }
  }
  for (size_t p = 0; p < layer.params().size(); ++p) {
    Parameter* param = layer.params()[p];
    for (int64_t i = 0; i < param->numel(); i += std::max<int64_t>(1, param->numel() / 5)) {
      if (const auto want = fd(param->data.data<float>() + i)) {
        EXPECT_NEAR(base.grads[p][i], *want, 5e-3 + 2e-2 * std::abs(*want)) << param->name << " " << i;
      }
    }
  }
  EXPECT_GT(checked, 10 * kinks) << checked << " checked, " << kinks << " at a routing change";
}
}  // namespace

TEST(MoeLayer, TopOneGradientsMatchFiniteDifferences) { check_layer_gradients({1, 1.0, true, false}); }
TEST(MoeLayer, TopTwoWithDropsGradientsMatchFiniteDifferences) { check_layer_gradients({2, 0.5, true, false}); }
TEST(MoeLayer, DroplessTopTwoGradientsMatchFiniteDifferences) { check_layer_gradients({2, 1.0, false, false}); }
TEST(MoeLayer, ResidualMoeGradientsMatchFiniteDifferences) { check_layer_gradients({1, 1.0, true, true}); }

TEST(MoeLayer, DroplessEqualsCapacityRoutingWhenNothingIsDropped) {
  for (const int k : {1, 2}) {
    OneLayer dropless({k, 1.0, false, false}), ample({k, 64.0, true, false});
    const LayerRun a = dropless.run(true), b = ample.run(true);
    EXPECT_NEAR(a.loss, b.loss, 1e-5);
    for (size_t i = 0; i < a.out.size(); ++i) ASSERT_NEAR(a.out[i], b.out[i], 1e-6) << i;
    for (size_t i = 0; i < a.dx.size(); ++i) ASSERT_NEAR(a.dx[i], b.dx[i], 1e-6) << i;
    for (size_t p = 0; p < a.grads.size(); ++p)
      for (size_t i = 0; i < a.grads[p].size(); ++i) ASSERT_NEAR(a.grads[p][i], b.grads[p][i], 1e-5) << p << " " << i;
  }
}
