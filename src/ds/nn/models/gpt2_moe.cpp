// GPT-2's MoE configuration: the model JSON's "moe" object with DeepSpeed's MoE argument names and defaults, where
// the MoE blocks go, and what a token's forward uses of an MoE model.
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "ds/core/json_input.h"
#include "ds/core/strings.h"
#include "ds/nn/models/gpt2.h"

namespace ds::nn {

int Gpt2MoeConfig::experts_of(int block) const {
  if (!enabled() || (block + 1) % layer_interval != 0) return 0;
  const size_t at = num_experts.size() == 1 ? 0 : static_cast<size_t>(block / layer_interval);
  const int n = at < num_experts.size() ? num_experts[at] : 0;
  return n > 1 ? n : 0;  // one expert: a dense block (Megatron-DeepSpeed)
}

namespace {
const std::vector<std::string>& moe_keys() {
  static const std::vector<std::string> keys = {
      "num_experts", "moe_layer_interval", "expert_interval", "k", "top_k", "capacity_factor",
      "eval_capacity_factor", "min_capacity", "noisy_gate_policy", "drop_tokens", "use_rts", "use_residual",
      "top2_2nd_expert_sampling", "drop_policy", "aux_loss_coef", "moe_loss_coeff", "z_loss_coef",
      "router_z_loss_coef", "ep_size"};
  return keys;
}
}  // namespace

Gpt2MoeConfig Gpt2MoeConfig::from_json(const nlohmann::json& j, const std::string& where) {
  Gpt2MoeConfig c;
  c.apply_json(j, where);
  return c;
}

void Gpt2MoeConfig::apply_json(const nlohmann::json& j, const std::string& where) {
  DS_CHECK_AS(ConfigError, j.is_object(), "[model] '{}': 'moe' must be an object of MoE options (num_experts, k, "
              "capacity_factor, ...), found {}", where, json_excerpt(j));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(moe_keys().begin(), moe_keys().end(), it.key()) != moe_keys().end()) continue;
    const std::vector<std::string> guess = closest_names(it.key(), moe_keys(), 1, typo_distance_limit(it.key()));
    DS_THROW(ConfigError, "[model] unknown key 'moe.{}' in '{}'; the MoE keys are {}. {}", it.key(), where,
             fmt::join(moe_keys(), ", "),
             guess.empty() ? std::string("Remove the key or fix its spelling.")
                           : fmt::format("Did you mean '{}'?", guess[0]));
  }
  auto get_int = [&](const char* key, int& dst) {
    if (!j.contains(key)) return;
    const std::optional<int> v = json_integer<int>(j[key]);
    DS_CHECK_AS(ConfigError, v.has_value(), "[model] '{}': 'moe.{}' must be an integer, found {}", where, key,
                json_excerpt(j[key]));
    dst = *v;
  };
  auto get_number = [&](const char* key, double& dst) {
    if (!j.contains(key)) return;
    DS_CHECK_AS(ConfigError, j[key].is_number(), "[model] '{}': 'moe.{}' must be a number, found {}", where, key,
                json_excerpt(j[key]));
    dst = j[key].get<double>();
  };
  auto get_bool = [&](const char* key, bool& dst) {
    if (!j.contains(key)) return;
    DS_CHECK_AS(ConfigError, j[key].is_boolean(), "[model] '{}': 'moe.{}' must be true or false, found {}", where,
                key, json_excerpt(j[key]));
    dst = j[key].get<bool>();
  };
  if (j.contains("num_experts")) {
    const nlohmann::json& n = j["num_experts"];
    num_experts.clear();
    if (n.is_array()) {
      DS_CHECK_AS(ConfigError, !n.empty() && n.size() <= 4096, "[model] '{}': 'moe.num_experts' must list 1 to 4096 "
                  "counts, found {}", where, n.size());
      for (const nlohmann::json& v : n) {
        const std::optional<int> e = json_integer<int>(v);
        DS_CHECK_AS(ConfigError, e.has_value(), "[model] '{}': 'moe.num_experts' must hold integers, found {}",
                    where, json_excerpt(v));
        num_experts.push_back(*e);
      }
    } else {
      const std::optional<int> e = json_integer<int>(n);
      DS_CHECK_AS(ConfigError, e.has_value(), "[model] '{}': 'moe.num_experts' must be an integer or a list of "
                  "integers (one per MoE block), found {}", where, json_excerpt(n));
      num_experts = {*e};
    }
  }
  get_int("moe_layer_interval", layer_interval);
  get_int("expert_interval", layer_interval);
  GateOptions& g = options.gate;
  get_int("k", g.k);
  get_int("top_k", g.k);
  get_number("capacity_factor", g.capacity_factor);
  get_number("eval_capacity_factor", g.eval_capacity_factor);
  get_int("min_capacity", g.min_capacity);
  if (j.contains("noisy_gate_policy")) {
    const nlohmann::json& p = j["noisy_gate_policy"];
    DS_CHECK_AS(ConfigError, p.is_null() || p.is_string(), "[model] '{}': 'moe.noisy_gate_policy' must be "
                "\"Jitter\", \"RSample\" or null, found {}", where, json_excerpt(p));
    g.noisy_gate_policy = p.is_null() ? NoisyGate::none : noisy_gate_from_name(p.get<std::string>(), where);
  }
  get_bool("drop_tokens", g.drop_tokens);
  get_bool("use_rts", g.use_rts);
  get_bool("top2_2nd_expert_sampling", g.top2_2nd_expert_sampling);
  get_bool("use_residual", options.use_residual);
  if (j.contains("drop_policy")) {
    const std::string p = j["drop_policy"].is_string() ? j["drop_policy"].get<std::string>() : "";
    DS_CHECK_AS(ConfigError, p == "probs" || p == "position", "[model] '{}': 'moe.drop_policy' must be \"probs\" or "
                "\"position\" (DeepSpeed's top-k drop policies), found {}", where, json_excerpt(j["drop_policy"]));
    g.drop_policy = p == "probs" ? TopkDrop::probs : TopkDrop::position;
  }
  get_number("aux_loss_coef", options.aux_loss_coef);
  get_number("moe_loss_coeff", options.aux_loss_coef);
  get_number("z_loss_coef", options.z_loss_coef);
  get_number("router_z_loss_coef", options.z_loss_coef);
  get_int("ep_size", ep_size);
}

nlohmann::json Gpt2MoeConfig::to_json() const {
  const GateOptions& g = options.gate;
  nlohmann::json j = {{"num_experts", num_experts.size() == 1 ? nlohmann::json(num_experts[0])
                                                               : nlohmann::json(num_experts)},
                      {"moe_layer_interval", layer_interval},
                      {"k", g.k},
                      {"capacity_factor", g.capacity_factor},
                      {"eval_capacity_factor", g.eval_capacity_factor},
                      {"min_capacity", g.min_capacity},
                      {"noisy_gate_policy", g.noisy_gate_policy == NoisyGate::none
                                                ? nlohmann::json(nullptr)
                                                : nlohmann::json(noisy_gate_name(g.noisy_gate_policy))},
                      {"drop_tokens", g.drop_tokens},
                      {"use_rts", g.use_rts},
                      {"use_residual", options.use_residual},
                      {"top2_2nd_expert_sampling", g.top2_2nd_expert_sampling},
                      {"drop_policy", g.drop_policy == TopkDrop::probs ? "probs" : "position"},
                      {"aux_loss_coef", options.aux_loss_coef},
                      {"z_loss_coef", options.z_loss_coef}};
  return j;
}

void Gpt2MoeConfig::validate(int n_layer) const {
  if (!enabled()) return;
  DS_CHECK_AS(ConfigError, layer_interval >= 1 && layer_interval <= n_layer, "[model] moe_layer_interval must be "
              "between 1 and n_layer ({}), found {}", n_layer, layer_interval);
  const size_t blocks = static_cast<size_t>(n_layer / layer_interval);
  DS_CHECK_AS(ConfigError, num_experts.size() == 1 || num_experts.size() == blocks, "[model] moe.num_experts lists "
              "{} counts, but the model has {} MoE blocks (n_layer {} / moe_layer_interval {}); give one count or {}",
              num_experts.size(), blocks, n_layer, layer_interval, blocks);
  const GateOptions& g = options.gate;
  for (const int e : num_experts) {
    DS_CHECK_AS(ConfigError, e >= 1 && e <= 1024, "[model] moe.num_experts must be between 1 and 1024, found {}", e);
    DS_CHECK_AS(ConfigError, e == 1 || g.k <= e, "[model] top-{} routing (moe.k) needs at least {} experts per MoE "
                "block, found a block of {}; lower k or add experts", g.k, g.k, e);
  }
  DS_CHECK_AS(ConfigError, g.k >= 1, "[model] moe.k must be at least 1, found {}", g.k);
  DS_CHECK_AS(ConfigError, g.capacity_factor > 0 && g.eval_capacity_factor > 0 && g.capacity_factor <= 1e4 &&
              g.eval_capacity_factor <= 1e4, "[model] moe.capacity_factor and eval_capacity_factor must be in (0, "
              "1e4], found {} and {}", g.capacity_factor, g.eval_capacity_factor);
  DS_CHECK_AS(ConfigError, g.min_capacity >= 0, "[model] moe.min_capacity must not be negative, found {}",
              g.min_capacity);
  DS_CHECK_AS(ConfigError, g.noisy_gate_policy != NoisyGate::rsample || g.k == 1, "[model] noisy_gate_policy "
              "'RSample' samples the top-1 expert; with k = {} use 'Jitter' or none (top-2 samples its second expert "
              "with top2_2nd_expert_sampling)", g.k);
  DS_CHECK_AS(ConfigError, options.aux_loss_coef >= 0 && options.z_loss_coef >= 0, "[model] moe.aux_loss_coef and "
              "z_loss_coef must not be negative, found {} and {}", options.aux_loss_coef, options.z_loss_coef);
  DS_CHECK_AS(ConfigError, ep_size >= 1, "[model] moe.ep_size must be at least 1, found {}", ep_size);
  for (int i = 0; i < n_layer; ++i) {
    const int e = experts_of(i);
    DS_CHECK_AS(ConfigError, e == 0 || e % ep_size == 0, "[model] block {} has {} experts, which the "
                "expert-parallel size {} does not divide (DeepSpeed asserts num_experts % ep_size == 0); choose an "
                "ep_size that divides every MoE block's num_experts", i, e, ep_size);
  }
}

std::string Gpt2MoeConfig::str() const {
  if (!enabled()) return "";
  const GateOptions& g = options.gate;
  return fmt::format("MoE: {} experts every {} block(s), top-{}, {}", fmt::join(num_experts, "/"), layer_interval,
                     g.k, g.drop_tokens ? fmt::format("capacity factor {}", g.capacity_factor) : "dropless");
}

std::vector<int> Gpt2Config::experts_per_block() const {
  if (!moe.enabled()) return {};
  std::vector<int> out;
  for (int i = 0; i < n_layer; ++i) out.push_back(moe.experts_of(i));
  return out;
}

int64_t Gpt2Config::active_params() const {
  int64_t n = 0;
  for (const Gpt2Weight& w : weight_spec())
    if (w.expert < moe.options.gate.k) n += w.numel();  // dense weights (expert -1) and k experts of each layer
  return n;
}

}  // namespace ds::nn
