// Typed, strict readers for ds_config.json objects (see config_reader.h), plus the "did you mean" machinery.
// Integers are accepted from JSON floats with no fractional part (5e8 is common in DeepSpeed configs and pydantic
// accepts it); booleans must be JSON true/false. null and "auto" always mean "use the default", as in DeepSpeed.
#include "ds/config/config_reader.h"

#include "ds/core/error.h"
#include "ds/core/strings.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <utility>

namespace ds::config::detail {

using nlohmann::json;

void ParseContext::warn(std::string message) { warnings.push_back(std::move(message)); }

std::string join_key(std::string_view path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return fmt::format("{}.{}", path, key);
}

namespace {

std::vector<std::string> lower_tokens(std::string_view key) {
  std::vector<std::string> tokens(1);
  for (char ch : key) {
    if (ch == '_') {
      tokens.emplace_back();
    } else {
      tokens.back().push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    }
  }
  return tokens;
}

size_t shared_tokens(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  size_t n = 0;
  for (const auto& t : a) {
    if (!t.empty() && std::find(b.begin(), b.end(), t) != b.end()) ++n;
  }
  return n;
}

}  // namespace

// Among candidates within the distance limit, more shared '_'-separated words wins, then the smaller distance:
// "warmup_steps" should suggest "warmup_num_steps" (distance 4, two shared words), not "warmup_type" (distance 3).
std::string did_you_mean(std::string_view key, const std::vector<std::string>& candidates) {
  const size_t limit = typo_distance_limit(key);
  const auto key_tokens = lower_tokens(key);
  std::string best;
  size_t best_shared = 0, best_d = limit + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(key, c, Case::insensitive);
    if (d > limit) continue;
    const size_t shared = shared_tokens(key_tokens, lower_tokens(c));
    if (best.empty() || shared > best_shared || (shared == best_shared && d < best_d)) {
      best = c;
      best_shared = shared;
      best_d = d;
    }
  }
  return best;
}

std::string render(const json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

namespace {

bool is_default_marker(const json& v) { return v.is_null() || (v.is_string() && v.get_ref<const std::string&>() == "auto"); }

std::string format_double(double v) { return fmt::format("{}", v); }

}  // namespace

BlockReader::BlockReader(const json* obj, std::string path, ParseContext& ctx)
    : obj_(obj), path_(std::move(path)), ctx_(&ctx) {
  if (obj_ != nullptr && is_default_marker(*obj_)) obj_ = nullptr;
  if (obj_ != nullptr && !obj_->is_object()) {
    DS_THROW(ConfigError, "[config] '{}' in {} must be a JSON object ({{...}}); found {}", path_, ctx_->source,
             render(*obj_));
  }
}

bool BlockReader::has(std::string_view key) const {
  if (obj_ == nullptr) return false;
  auto it = obj_->find(key);
  return it != obj_->end() && !is_default_marker(*it);
}

bool BlockReader::contains(std::string_view key) const { return obj_ != nullptr && obj_->contains(key); }

const json* BlockReader::lookup(std::string_view key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.emplace_back(key);
  if (obj_ == nullptr) return nullptr;
  auto it = obj_->find(key);
  if (it == obj_->end() || is_default_marker(*it)) return nullptr;
  return &*it;
}

void BlockReader::type_error(std::string_view key, std::string_view expected, const json& v) const {
  DS_THROW(ConfigError, "[config] '{}' in {} must be {}; found {}", key_name(key), ctx_->source, expected, render(v));
}

void BlockReader::not_yet(std::string_view key, const std::string& value_text) {
  ctx_->warn(fmt::format("[config] '{}' = {} in {} is not implemented yet in deepspeed.cpp; it is ignored",
                         key_name(key), value_text, ctx_->source));
}

bool BlockReader::read(std::string_view key, bool& out, Support s) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  if (!v->is_boolean()) type_error(key, "true or false", *v);
  const bool value = v->get<bool>();
  if (s == Support::not_yet && value != out) not_yet(key, value ? "true" : "false");
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, int64_t& out, Support s, int64_t min, int64_t max) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  int64_t value = 0;
  if (v->is_number_integer() && !v->is_number_unsigned()) {
    value = v->get<int64_t>();
  } else if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) type_error(key, "a 64-bit integer", *v);
    value = static_cast<int64_t>(u);
  } else if (v->is_number_float()) {
    const double d = v->get<double>();
    // 9.2e18 is the first double past INT64_MAX; reject it and anything with a fractional part.
    if (!std::isfinite(d) || d != std::floor(d) || d >= 9.2233720368547758e18 || d < -9.2233720368547758e18) {
      type_error(key, "an integer", *v);
    }
    value = static_cast<int64_t>(d);
  } else {
    type_error(key, "an integer", *v);
  }
  if (value < min || value > max) {
    if (max == std::numeric_limits<int64_t>::max()) {
      DS_THROW(ConfigError, "[config] '{}' in {} must be at least {}; found {}", key_name(key), ctx_->source, min,
               value);
    }
    DS_THROW(ConfigError, "[config] '{}' in {} must be between {} and {}; found {}", key_name(key), ctx_->source, min,
             max, value);
  }
  if (s == Support::not_yet && value != out) not_yet(key, std::to_string(value));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, int& out, Support s, int min, int max) {
  int64_t wide = out;
  const bool given = read(key, wide, s, min, max);
  out = static_cast<int>(wide);
  return given;
}

bool BlockReader::read(std::string_view key, double& out, Support s, double min, double max) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  if (!v->is_number()) type_error(key, "a number", *v);
  const double value = v->get<double>();
  if (!(value >= min && value <= max)) {  // also rejects NaN
    if (std::isinf(max)) {
      DS_THROW(ConfigError, "[config] '{}' in {} must be at least {}; found {}", key_name(key), ctx_->source,
               format_double(min), format_double(value));
    }
    DS_THROW(ConfigError, "[config] '{}' in {} must be between {} and {}; found {}", key_name(key), ctx_->source,
             format_double(min), format_double(max), format_double(value));
  }
  if (s == Support::not_yet && value != out) not_yet(key, format_double(value));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, std::string& out, Support s) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  if (!v->is_string()) type_error(key, "a string", *v);
  const std::string value = v->get<std::string>();
  if (s == Support::not_yet && value != out) not_yet(key, render(*v));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, std::optional<int64_t>& out, Support s, int64_t min) {
  if (!has(key)) {
    lookup(key);
    return false;
  }
  int64_t value = out.value_or(0);
  read(key, value, Support::implemented, min);
  if (s == Support::not_yet && (!out || *out != value)) not_yet(key, std::to_string(value));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, std::vector<std::string>& out, Support s) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  if (!v->is_array()) type_error(key, "a list of strings", *v);
  std::vector<std::string> value;
  for (const auto& e : *v) {
    if (!e.is_string()) type_error(key, "a list of strings", *v);
    value.push_back(e.get<std::string>());
  }
  if (s == Support::not_yet && value != out) not_yet(key, render(*v));
  out = std::move(value);
  return true;
}

bool BlockReader::read_choice(std::string_view key, size_t& index, std::initializer_list<std::string_view> choices,
                              Support s) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  std::vector<std::string> names(choices.begin(), choices.end());
  const std::string listing = quoted_list(names);
  if (!v->is_string()) type_error(key, fmt::format("one of {}", listing), *v);
  const std::string value = v->get<std::string>();
  auto it = std::find(names.begin(), names.end(), value);
  if (it == names.end()) {
    const std::string guess = did_you_mean(value, names);
    DS_THROW(ConfigError, "[config] '{}' in {} must be one of {}; found '{}'{}", key_name(key), ctx_->source, listing,
             value, guess.empty() ? "" : fmt::format("; did you mean '{}'?", guess));
  }
  const size_t found = static_cast<size_t>(it - names.begin());
  if (s == Support::not_yet && found != index) not_yet(key, render(*v));
  index = found;
  return true;
}

bool BlockReader::read_pair(std::string_view key, double& first, double& second, Support s) {
  const json* v = lookup(key);
  if (v == nullptr) return false;
  if (!v->is_array() || v->size() != 2 || !(*v)[0].is_number() || !(*v)[1].is_number()) {
    type_error(key, "a list of two numbers, e.g. [0.9, 0.999]", *v);
  }
  const double a = (*v)[0].get<double>(), b = (*v)[1].get<double>();
  if (s == Support::not_yet && (a != first || b != second)) not_yet(key, render(*v));
  first = a;
  second = b;
  return true;
}

BlockReader BlockReader::child(std::string_view key) {
  const json* v = lookup(key);
  return BlockReader(v, key_name(key), *ctx_);
}

const json* BlockReader::raw(std::string_view key) { return lookup(key); }

void BlockReader::accept_unmodelled(std::string_view key) {
  const json* v = lookup(key);
  if (v == nullptr) return;
  bool off = (v->is_boolean() && !v->get<bool>()) || (v->is_number() && v->get<double>() == 0.0) ||
             (v->is_object() && v->empty());
  if (v->is_object()) {
    auto it = v->find("enabled");
    if (it != v->end() && it->is_boolean() && !it->get<bool>()) off = true;
  }
  if (!off) {
    ctx_->warn(fmt::format("[config] '{}' in {} is a DeepSpeed setting that deepspeed.cpp does not implement yet; "
                           "it is ignored",
                           key_name(key), ctx_->source));
  }
}

void BlockReader::hint(std::string key, std::string text) { hints_.emplace_back(std::move(key), std::move(text)); }

void BlockReader::finish() {
  if (obj_ == nullptr) return;
  for (const auto& [key, value] : obj_->items()) {
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string extra;
    for (const auto& [k, text] : hints_) {
      if (k == key) extra = fmt::format(" ({})", text);
    }
    const std::string guess = did_you_mean(key, known_);
    if (!guess.empty()) {
      DS_THROW(ConfigError, "[config] unknown key '{}' in {}{}; did you mean '{}'?", key_name(key), ctx_->source,
               extra, guess);
    }
    std::string where = path_.empty() ? std::string("at the top level") : fmt::format("in '{}'", path_);
    if (known_.size() <= 16) {
      std::string listing;
      for (const auto& k : known_) listing += fmt::format("{}{}", listing.empty() ? "" : ", ", k);
      DS_THROW(ConfigError, "[config] unknown key '{}' in {}{}; the keys accepted {} are: {}", key_name(key),
               ctx_->source, extra, where, listing);
    }
    DS_THROW(ConfigError,
             "[config] unknown key '{}' in {}{}; it is not a DeepSpeed setting {}: remove it or check its spelling",
             key_name(key), ctx_->source, extra, where);
  }
}

}  // namespace ds::config::detail
