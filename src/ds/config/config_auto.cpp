// "auto" values, filled the way Hugging Face's DeepSpeed integration fills them (transformers 4.4x,
// integrations/deepspeed.py: HfTrainerDeepSpeedConfig.trainer_config_process / trainer_config_finalize), with
// dspeed train's flags in the place of TrainingArguments. As there, a key the config sets explicitly and the user
// also gives on the command line must agree: a difference is a ConfigError rather than one silently winning.
// Runs on the JSON tree before the blocks are parsed, so the readers see ordinary values.
#include "ds/config/config_auto.h"

#include "ds/config/config_reader.h"
#include "ds/core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <utility>

namespace ds::config::detail {

using nlohmann::json;

namespace {

bool is_auto(const json* v) { return v != nullptr && v->is_string() && v->get_ref<const std::string&>() == "auto"; }

// The node at `path` (nullptr when a step is missing or not an object).
json* find(json& root, const std::vector<std::string>& path) {
  json* node = &root;
  for (const auto& key : path) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(key);
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node;
}

std::string dotted(const std::vector<std::string>& path) {
  std::string s;
  for (const auto& k : path) s = join_key(s, k);
  return s;
}

// A number or boolean as a double (true is 1, as in Python), else nullopt.
std::optional<double> as_number(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? 1.0 : 0.0;
  if (v.is_number()) return v.get<double>();
  return std::nullopt;
}

// Numbers compare by value (8 and 8.0 agree, and 1 and true, as in Python), lists elementwise, the rest as JSON.
bool same_value(const json& a, const json& b) {
  const auto x = as_number(a), y = as_number(b);
  if (x && y) return *x == *y;
  if (a.is_array() && b.is_array() && a.size() == b.size()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_value(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

struct Rule {
  std::vector<std::string> path;
  json value;
  std::string flag;  // the flag that sets it, or how the value was chosen
  bool given = false;
  bool used_elsewhere = false;  // the flag also feeds another value: no "not used" warning when this key is absent
};

// A batch-size value of the config as a positive integer, as the reader will coerce it; nullopt otherwise.
std::optional<int64_t> batch_value(const json& v) {
  std::optional<double> d = as_number(v);
  if (!d && v.is_string()) {
    const std::string& t = v.get_ref<const std::string&>();
    char* end = nullptr;
    const double parsed = std::strtod(t.c_str(), &end);
    if (!t.empty() && end == t.c_str() + t.size()) d = parsed;
  }
  if (!d || !std::isfinite(*d) || *d < 1 || *d > 1e15 || *d != std::floor(*d)) return std::nullopt;
  return static_cast<int64_t>(*d);
}

class Resolver {
 public:
  Resolver(json& root, const std::string& source, std::vector<std::string>& resolved,
           std::vector<std::string>& warnings)
      : root_(root), source_(source), resolved_(resolved), warnings_(warnings) {}

  void apply(const Rule& r) {
    json* node = find(root_, r.path);
    const std::string key = dotted(r.path);
    if (is_auto(node)) {
      *node = r.value;
      resolved_.push_back(fmt::format("'{}' = {} ({})", key, r.value.dump(), r.flag));
      return;
    }
    if (!r.given) return;
    if (node == nullptr || node->is_null()) {
      if (r.used_elsewhere) return;
      warnings_.push_back(fmt::format("[config] {} {} is not used: {} does not set '{}'; write \"auto\" there to "
                                      "take the flag", r.flag, r.value.dump(), source_, key));
      return;
    }
    DS_CHECK_AS(ConfigError, same_value(*node, r.value),
                "[config] '{}' is {} in {} but {} is {}; set it to \"auto\" in the config to take the flag, or drop "
                "{} (as Hugging Face's integration, a config value and a flag must agree)",
                key, render(*node), source_, r.flag, r.value.dump(), r.flag);
  }

  // The value the config ends up with at `path` once resolved, else `fallback`.
  json effective(const std::vector<std::string>& path, const json& fallback) const {
    const json* node = find(root_, path);
    if (node == nullptr || node->is_null() || is_auto(node)) return fallback;
    return *node;
  }

 private:
  json& root_;
  const std::string& source_;
  std::vector<std::string>& resolved_;
  std::vector<std::string>& warnings_;
};

template <typename T>
Rule rule(std::vector<std::string> path, const FlagValue<T>& f, const char* flag) {
  return Rule{std::move(path), json(f.value), f.given ? std::string(flag) : fmt::format("default of {}", flag),
              f.given};
}

}  // namespace

void resolve_auto(json& root, int world, const AutoValues& a, const std::string& source,
                  std::vector<std::string>& resolved, std::vector<std::string>& warnings) {
  Resolver res(root, source, resolved, warnings);
  // A config without any batch size (a tutorial's fragment, an autotuning template) takes the flags' batch: DeepSpeed
  // would stop there, but a training program has its own batch size to offer, and says it did.
  if (root.is_object() && !root.contains("train_batch_size") && !root.contains("train_micro_batch_size_per_gpu")) {
    root["train_micro_batch_size_per_gpu"] = a.micro_batch.value;
    resolved.push_back(fmt::format("'train_micro_batch_size_per_gpu' = {} ({}; the config sets no batch size)",
                                   a.micro_batch.value,
                                   a.micro_batch.given ? "--micro-batch" : "default of --micro-batch"));
  }
  // A flag whose key the config lacks still counts when train_batch_size is "auto": it goes into the product.
  const bool train_auto = is_auto(find(root, {"train_batch_size"}));
  Rule micro_rule = rule({"train_micro_batch_size_per_gpu"}, a.micro_batch, "--micro-batch");
  Rule gas_rule = rule({"gradient_accumulation_steps"}, a.grad_accum, "--grad-accum");
  micro_rule.used_elsewhere = gas_rule.used_elsewhere = train_auto;
  res.apply(micro_rule);
  res.apply(gas_rule);
  // train_batch_size = world x micro x accumulation, from the values the config now holds. Values that are not
  // positive integers, or a product past 2^53, leave it "auto": the reader then names the key at fault.
  const auto micro = batch_value(res.effective({"train_micro_batch_size_per_gpu"}, a.micro_batch.value));
  const auto gas = batch_value(res.effective({"gradient_accumulation_steps"}, a.grad_accum.value));
  if (micro && gas && double(world) * double(*micro) * double(*gas) <= 9007199254740992.0) {
    res.apply(Rule{{"train_batch_size"}, int64_t(world) * *micro * *gas,
                   fmt::format("data-parallel size {} x micro-batch x accumulation", world), false});
  }
  res.apply(rule({"gradient_clipping"}, a.max_grad_norm, "--max-grad-norm"));

  res.apply(rule({"optimizer", "params", "lr"}, a.lr, "--lr"));
  res.apply(Rule{{"optimizer", "params", "betas"}, json::array({a.beta1.value, a.beta2.value}),
                 "dspeed train's default", false});
  res.apply(Rule{{"optimizer", "params", "eps"}, a.eps.value, "dspeed train's default", false});
  res.apply(rule({"optimizer", "params", "weight_decay"}, a.weight_decay, "--weight-decay"));

  res.apply(Rule{{"scheduler", "params", "warmup_min_lr"}, 0, "Hugging Face's choice", false});
  const json lr = res.effective({"optimizer", "params", "lr"}, a.lr.value);
  res.apply(Rule{{"scheduler", "params", "warmup_max_lr"}, lr, "the optimizer's lr", false});
  // The schedule's length: total_num_steps "auto" is the run's (--steps), and warmup "auto" is --warmup-steps or
  // else 5% of the schedule's length (50 of the default 1,000). A cosine needs total > max(2, warmup): a run of a
  // step or two takes the first steps of a 3-step schedule.
  const json total_json = res.effective({"scheduler", "params", "total_num_steps"}, a.total_steps.value);
  const auto total = batch_value(total_json);
  const int64_t warmup = a.warmup_steps.given ? a.warmup_steps.value
                                              : std::llround(0.05 * static_cast<double>(total.value_or(0)));
  res.apply(Rule{{"scheduler", "params", "warmup_num_steps"}, warmup,
                 a.warmup_steps.given ? "--warmup-steps" : "5% of total_num_steps", a.warmup_steps.given});
  const json warmup_json = res.effective({"scheduler", "params", "warmup_num_steps"}, warmup);
  const int64_t warmup_eff = batch_value(warmup_json).value_or(0);
  res.apply(Rule{{"scheduler", "params", "total_num_steps"}, std::max(a.total_steps.value,
                                                                      std::max<int64_t>(2, warmup_eff) + 1),
                 "the run's length, --steps", a.total_steps.given});

  // --precision: an explicit "enabled" must agree with it; a block it needs but the config lacks is a warning.
  const std::string& p = a.precision.value;
  const std::string flag = a.precision.given ? "--precision" : "default of --precision";
  for (const char* block : {"fp16", "bf16", "bfloat16"}) {
    const bool want = p == (std::string(block) == "fp16" ? "fp16" : "bf16");
    const json* node = find(root, {block, "enabled"});
    const bool explicit_value = node != nullptr && !node->is_null() && !is_auto(node);
    res.apply(Rule{{block, "enabled"}, want, flag, a.precision.given && explicit_value});
    if (a.precision.given && want && find(root, {block}) == nullptr && std::string(block) != "bfloat16" &&
        !(std::string(block) == "bf16" && find(root, {"bfloat16"}) != nullptr)) {
      warnings.push_back(fmt::format("[config] --precision {} is not used: {} has no '{}' block; add \"{}\": "
                                     "{{\"enabled\": \"auto\"}} to take the flag", p, source, block, block));
    }
  }

  if (a.hidden_size > 0) {
    const int64_t h = a.hidden_size;
    const std::string model = fmt::format("model width {}", h);
    res.apply(Rule{{"zero_optimization", "reduce_bucket_size"}, h * h, model + " squared", false});
    res.apply(Rule{{"zero_optimization", "stage3_prefetch_bucket_size"},
                   static_cast<int64_t>(std::floor(0.9 * double(h) * double(h))), "0.9 x " + model + " squared",
                   false});
    res.apply(Rule{{"zero_optimization", "stage3_param_persistence_threshold"}, 10 * h, "10 x " + model, false});
  }
}

}  // namespace ds::config::detail
