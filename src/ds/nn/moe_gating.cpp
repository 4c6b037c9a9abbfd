// Token routing: softmax gate, top-1 / top-2 / top-k choice, capacity and dropping, combine weights, the
// load-balancing and z losses, and their backward (DeepSpeed's top1gating, top2gating and topkgating).
#include "ds/nn/moe_gating.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

#include "ds/core/error.h"
#include "ds/core/rng.h"

namespace ds::nn {

int64_t expert_capacity(int64_t S, int E, double factor, int k, int min_capacity) {
  const auto c = static_cast<int64_t>(std::ceil(static_cast<double>(S) / E * factor * k));
  return std::max<int64_t>(c, min_capacity);
}

namespace {
constexpr float kNormEps = FLT_EPSILON;  // torch.finfo(float32).eps, the clamp of the top-2/top-k renormalisation

float gumbel(Rng& rng) {  // -log(-log(U)), U in (0, 1)
  const float u = (static_cast<float>(rng.next_u64() >> 40) + 0.5f) * (1.0f / 16777216.0f);
  return -std::log(-std::log(u));
}

int argmax(const float* v, int n, int skip = -1) {
  int best = -1;
  for (int e = 0; e < n; ++e)
    if (e != skip && (best < 0 || v[e] > v[best])) best = e;
  return best;
}

// Keeps at most `capacity` of the candidates (assignment rows, in token order) of one expert: those of highest
// priority (ties: earlier first), or the first ones when `priority` is null. Marks the rest dropped (slot -1).
void keep_best(std::vector<int64_t>& candidates, int64_t capacity, const std::vector<float>* priority,
               std::vector<int32_t>& slot) {
  if (static_cast<int64_t>(candidates.size()) <= capacity) return;
  if (priority) {
    std::vector<int64_t> order = candidates;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return (*priority)[size_t(a)] > (*priority)[size_t(b)]; });
    for (size_t i = static_cast<size_t>(capacity); i < order.size(); ++i) slot[size_t(order[i])] = -1;
  } else {
    for (size_t i = static_cast<size_t>(capacity); i < candidates.size(); ++i) slot[size_t(candidates[i])] = -1;
  }
}
}  // namespace

Routing route_tokens(const float* logits, int64_t S, const GateOptions& o, bool training, uint64_t noise_seed) {
  const int E = o.num_experts, k = o.k;
  DS_ASSERT(E >= 1 && k >= 1 && k <= E, "top-{} of {} experts", k, E);
  Routing r;
  r.S = S, r.E = E, r.k = k;
  const auto SE = static_cast<size_t>(S) * static_cast<size_t>(E), SK = static_cast<size_t>(S) * size_t(k);
  r.gates.resize(SE);
  r.lse.resize(static_cast<size_t>(S));
  double z_sum = 0;
  for (int64_t s = 0; s < S; ++s) {
    const float* l = logits + s * E;
    float* g = r.gates.data() + s * E;
    const float m = *std::max_element(l, l + E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += g[e] = std::exp(l[e] - m);
    for (int e = 0; e < E; ++e) g[e] = static_cast<float>(g[e] / sum);
    r.lse[size_t(s)] = m + static_cast<float>(std::log(sum));
    z_sum += double(r.lse[size_t(s)]) * r.lse[size_t(s)];
  }
  r.z_loss = S > 0 ? z_sum / static_cast<double>(S) : 0.0;

  // Choices. Noise is drawn in a fixed order: Gumbel [S, E] first (when used), then the RTS priorities [S].
  Rng rng(noise_seed);
  r.expert.resize(SK);
  std::vector<float> noisy(static_cast<size_t>(E));
  const bool rsample = training && k == 1 && o.noisy_gate_policy == NoisyGate::rsample;
  const bool sample_2nd = training && k == 2 && o.top2_2nd_expert_sampling;
  std::vector<int> order(static_cast<size_t>(E));
  for (int64_t s = 0; s < S; ++s) {
    const float* l = logits + s * E;
    int32_t* choice = r.expert.data() + s * k;
    if (rsample || sample_2nd) {
      for (int e = 0; e < E; ++e) noisy[size_t(e)] = l[e] + gumbel(rng);
    }
    if (k == 1) {
      choice[0] = argmax(rsample ? noisy.data() : l, E);
    } else if (k == 2) {
      choice[0] = argmax(l, E);
      choice[1] = argmax(sample_2nd ? noisy.data() : l, E, choice[0]);
    } else {  // topkgating: the k largest logits, largest first
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
      for (int j = 0; j < k; ++j) choice[j] = order[size_t(j)];
    }
  }
  std::vector<float> rts;
  if (k == 1 && o.use_rts && o.drop_tokens) {
    rts.resize(static_cast<size_t>(S));
    for (float& u : rts) u = rng.uniform();
  }

  // The load-balancing loss, before dropping: me = mean gate, ce = routed fraction (top-1/top-2: first choices;
  // top-k: all k, the loss divided by k).
  r.ce.assign(static_cast<size_t>(E), 0.0f);
  r.routed.assign(static_cast<size_t>(E), 0);
  for (int64_t s = 0; s < S; ++s)
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[size_t(s * k + j)];
      ++r.routed[size_t(e)];
      if (j == 0 || k > 2) r.ce[size_t(e)] += 1.0f;
    }
  double l_aux = 0;
  for (int e = 0; e < E; ++e) {
    r.ce[size_t(e)] /= static_cast<float>(std::max<int64_t>(S, 1));
    double me = 0;
    for (int64_t s = 0; s < S; ++s) me += r.gates[size_t(s * E + e)];
    l_aux += me / static_cast<double>(std::max<int64_t>(S, 1)) * r.ce[size_t(e)];
  }
  r.l_aux = l_aux * E / (k > 2 ? k : 1);

  // Capacity and slots. Candidates per expert in slot order: token order, except that top-2 places every first
  // choice before the second ones (DeepSpeed's locations2 += sum(mask1)).
  const double factor = training ? o.capacity_factor : o.eval_capacity_factor;
  r.capacity = o.drop_tokens ? expert_capacity(S, E, factor, k, o.min_capacity) : -1;
  std::vector<std::vector<int64_t>> candidates(static_cast<size_t>(E));
  if (k == 2) {
    for (int j = 0; j < 2; ++j)
      for (int64_t s = 0; s < S; ++s) candidates[size_t(r.expert[size_t(s * 2 + j)])].push_back(s * 2 + j);
  } else {
    for (int64_t s = 0; s < S; ++s)
      for (int j = 0; j < k; ++j) candidates[size_t(r.expert[size_t(s * k + j)])].push_back(s * k + j);
  }
  r.slot.assign(SK, 0);
  std::vector<float> priority;  // per assignment row, when dropping is by priority
  if (r.capacity >= 0) {
    if (!rts.empty()) {
      priority.resize(SK);
      for (int64_t s = 0; s < S; ++s) priority[size_t(s)] = rts[size_t(s)];
    } else if (k > 2 && o.drop_policy == TopkDrop::probs) {
      priority.resize(SK);
      for (size_t a = 0; a < SK; ++a) priority[a] = r.gates[a / size_t(k) * size_t(E) + size_t(r.expert[a])];
    }
    // Top-2 drops by position: a slot past the capacity is dropped.
    for (auto& c : candidates) keep_best(c, r.capacity, priority.empty() || k == 2 ? nullptr : &priority, r.slot);
  }
  r.rows.assign(static_cast<size_t>(E), 0);
  for (int e = 0; e < E; ++e)
    for (const int64_t a : candidates[size_t(e)])
      if (r.slot[size_t(a)] >= 0) r.slot[size_t(a)] = static_cast<int32_t>(r.rows[size_t(e)]++);
  for (int e = 0; e < E; ++e) r.dropped += r.routed[size_t(e)] - r.rows[size_t(e)];

  // Combine weights: top-1 the gate value; top-2 and top-k the kept choices' gate values renormalised to sum to 1.
  r.weight.assign(SK, 0.0f);
  for (int64_t s = 0; s < S; ++s) {
    const float* g = r.gates.data() + s * E;
    float sum = 0;
    for (int j = 0; j < k; ++j) {
      const size_t a = size_t(s * k + j);
      if (r.slot[a] >= 0) sum += r.weight[a] = g[r.expert[a]];
    }
    if (k == 1) continue;
    const float denom = std::max(sum, kNormEps);
    for (int j = 0; j < k; ++j) r.weight[size_t(s * k + j)] /= denom;
  }
  return r;
}

void route_tokens_backward(const Routing& r, const float* dweight, float aux_grad, float z_grad, float* dlogits) {
  const int E = r.E, k = r.k;
  const int64_t S = r.S;
  std::vector<float> dgates(static_cast<size_t>(E));
  const float aux = S > 0 ? aux_grad * static_cast<float>(E) / static_cast<float>((k > 2 ? k : 1) * S) : 0.0f;
  for (int64_t s = 0; s < S; ++s) {
    const float* g = r.gates.data() + s * E;
    for (int e = 0; e < E; ++e) dgates[size_t(e)] = aux * r.ce[size_t(e)];
    if (k == 1) {
      if (r.slot[size_t(s)] >= 0) dgates[size_t(r.expert[size_t(s)])] += dweight[s];
    } else {
      // w_j = g_j / D with D = max(sum of the kept g, eps): dg_j = (dw_j - sum_i dw_i w_i) / D (D not clamped).
      float sum = 0, dot = 0;
      for (int j = 0; j < k; ++j) {
        const size_t a = size_t(s * k + j);
        if (r.slot[a] < 0) continue;
        sum += g[r.expert[a]];
        dot += dweight[a] * r.weight[a];
      }
      const bool clamped = sum < kNormEps;
      const float denom = std::max(sum, kNormEps);
      for (int j = 0; j < k; ++j) {
        const size_t a = size_t(s * k + j);
        if (r.slot[a] < 0) continue;
        dgates[size_t(r.expert[a])] += (dweight[a] - (clamped ? 0.0f : dot)) / denom;
      }
    }
    // Softmax backward, plus the z-loss's d(lse^2)/dlogits = 2 lse softmax.
    double gdot = 0;
    for (int e = 0; e < E; ++e) gdot += double(g[e]) * dgates[size_t(e)];
    const float z = S > 0 ? z_grad * 2.0f * r.lse[size_t(s)] / static_cast<float>(S) : 0.0f;
    float* dl = dlogits + s * E;
    for (int e = 0; e < E; ++e) dl[e] = g[e] * (dgates[size_t(e)] - static_cast<float>(gdot) + z);
  }
}

ExpertGroups group_by_expert(const Routing& r) {
  ExpertGroups g;
  g.offset.assign(static_cast<size_t>(r.E) + 1, 0);
  for (int e = 0; e < r.E; ++e) g.offset[size_t(e) + 1] = g.offset[size_t(e)] + r.rows[size_t(e)];
  g.token.assign(static_cast<size_t>(g.offset.back()), -1);
  g.row.assign(r.expert.size(), -1);
  for (size_t a = 0; a < r.expert.size(); ++a) {
    if (r.slot[a] < 0) continue;
    g.row[a] = static_cast<int32_t>(g.offset[size_t(r.expert[a])] + r.slot[a]);
    g.token[size_t(g.row[a])] = static_cast<int32_t>(a / size_t(r.k));
  }
  return g;
}

const char* noisy_gate_name(NoisyGate g) {
  switch (g) {
    case NoisyGate::none: return "None";
    case NoisyGate::jitter: return "Jitter";
    case NoisyGate::rsample: return "RSample";
  }
  return "?";
}

NoisyGate noisy_gate_from_name(const std::string& name, const std::string& where) {
  if (name.empty() || name == "None" || name == "none") return NoisyGate::none;
  if (name == "Jitter") return NoisyGate::jitter;
  if (name == "RSample") return NoisyGate::rsample;
  DS_THROW(ConfigError, "[model] {}: noisy_gate_policy '{}' is not one of DeepSpeed's: \"Jitter\", \"RSample\" or "
           "null; fix the spelling (it is case-sensitive) or remove it", where, name);
}

}  // namespace ds::nn
