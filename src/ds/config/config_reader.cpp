// Typed readers for ds_config.json objects (see config_reader.h), plus the "did you mean" machinery.
// Values are coerced as pydantic v2's lax mode does: an integer may be written 5e8 (no fractional part), "2", or
// true/false; a number may be a numeric string or a boolean; a boolean may be 0/1 or one of "true", "false", "yes",
// "no", "on", "off", "t", "f", "y", "n", "1", "0". Strings are never coerced from other types (pydantic neither).
// null and "auto" mean "use the default", as in DeepSpeed; an "auto" that reaches a reader is listed with that
// default (the values dspeed train can fill are resolved before, in config_auto.cpp).
#include "ds/config/config_reader.h"

#include "ds/core/error.h"
#include "ds/core/strings.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <utility>

namespace ds::config::detail {

using nlohmann::json;

void ParseContext::warn(std::string message) { warnings.push_back(std::move(message)); }

void ParseContext::summarise() {
  auto listing = [](const std::vector<std::string>& items) {  // at most 20, so a hostile file cannot flood the log
    constexpr size_t kShown = 20;
    std::string s;
    for (size_t i = 0; i < std::min(items.size(), kShown); ++i) {
      const std::string& item = items[i];
      s += fmt::format("{}{}", s.empty() ? "" : "; ", item.size() > 200 ? item.substr(0, 197) + "..." : item);
    }
    if (items.size() > kShown) s += fmt::format("; and {} more", items.size() - kShown);
    return s;
  };
  if (!not_implemented.empty()) {
    warn(fmt::format("[config] {} asks for DeepSpeed features that deepspeed.cpp does not implement yet; the run goes "
                     "on without them (the model trains the same, as far as they leave the arithmetic unchanged): {}",
                     source, listing(not_implemented)));
  }
  if (!ignored.empty()) {
    warn(fmt::format("[config] {} has keys that DeepSpeed ignores, so they are ignored here too: {}", source,
                     listing(ignored)));
  }
  if (!auto_defaults.empty()) {
    warn(fmt::format("[config] {} has \"auto\" values that nothing here fills in; DeepSpeed's defaults are used, as "
                     "DeepSpeed does: {}", source, listing(auto_defaults)));
  }
}

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
    // The distance is at least the difference in length: skip those early (a hostile 16 MiB key costs nothing).
    if (std::max(key.size(), c.size()) - std::min(key.size(), c.size()) > limit) continue;
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

std::string trimmed_lower(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  std::string out = s.substr(b, e - b);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

// pydantic's lax booleans.
std::optional<bool> lax_bool(const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) {
    const double d = v.get<double>();
    if (d == 0.0) return false;
    if (d == 1.0) return true;
    return std::nullopt;
  }
  if (!v.is_string()) return std::nullopt;
  const std::string t = trimmed_lower(v.get<std::string>());
  for (const char* yes : {"true", "yes", "on", "t", "y", "1"})
    if (t == yes) return true;
  for (const char* no : {"false", "no", "off", "f", "n", "0"})
    if (t == no) return false;
  return std::nullopt;
}

// A finite number from a JSON number, a boolean or a numeric string (the whole string).
std::optional<double> lax_double(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? 1.0 : 0.0;
  if (v.is_number()) return v.get<double>();
  if (!v.is_string()) return std::nullopt;
  const std::string t = trimmed_lower(v.get<std::string>());
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

// An integer from a JSON integer, a float without fractional part, a boolean or a string of either.
std::optional<int64_t> lax_int(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) {
    const std::string t = trimmed_lower(v.get<std::string>());
    int64_t i = 0;
    const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), i);
    if (ec == std::errc() && ptr == t.data() + t.size() && !t.empty()) return i;
  }
  const std::optional<double> d = lax_double(v);
  // 9.2e18 is the first double past INT64_MAX; reject it and anything with a fractional part.
  if (!d || *d != std::floor(*d) || *d >= 9.2233720368547758e18 || *d < -9.2233720368547758e18) return std::nullopt;
  return static_cast<int64_t>(*d);
}

}  // namespace

BlockReader::BlockReader(const json* obj, std::string path, ParseContext& ctx, Keys keys)
    : obj_(obj), path_(std::move(path)), ctx_(&ctx), keys_(keys) {
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

const json* BlockReader::value_of(std::string_view key, const std::string& default_text) {
  const json* v = lookup(key);
  if (v == nullptr && obj_ != nullptr) {
    auto it = obj_->find(key);
    if (it != obj_->end() && it->is_string())
      ctx_->auto_defaults.push_back(fmt::format("'{}' -> {}", key_name(key), default_text));
  }
  return v;
}

void BlockReader::type_error(std::string_view key, std::string_view expected, const json& v) const {
  DS_THROW(ConfigError, "[config] '{}' in {} must be {}; found {}", key_name(key), ctx_->source, expected, render(v));
}

void BlockReader::not_yet(std::string_view key, const std::string& value_text) {
  ctx_->not_implemented.push_back(fmt::format("'{}' = {}", key_name(key), value_text));
}

bool BlockReader::read(std::string_view key, bool& out, Support s) {
  const json* v = value_of(key, out ? "true" : "false");
  if (v == nullptr) return false;
  const std::optional<bool> value = lax_bool(*v);
  if (!value) type_error(key, "true or false", *v);
  if (s == Support::not_yet && *value != out) not_yet(key, *value ? "true" : "false");
  out = *value;
  return true;
}

bool BlockReader::read(std::string_view key, int64_t& out, Support s, int64_t min, int64_t max) {
  const json* v = value_of(key, std::to_string(out));
  if (v == nullptr) return false;
  const std::optional<int64_t> parsed = lax_int(*v);
  if (!parsed) type_error(key, "an integer", *v);
  const int64_t value = *parsed;
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
  const json* v = value_of(key, format_double(out));
  if (v == nullptr) return false;
  const std::optional<double> parsed = lax_double(*v);
  if (!parsed) type_error(key, "a number", *v);
  const double value = *parsed;
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
  const json* v = value_of(key, out.empty() ? std::string("unset") : fmt::format("'{}'", out));
  if (v == nullptr) return false;
  if (!v->is_string()) type_error(key, "a string", *v);
  const std::string value = v->get<std::string>();
  if (s == Support::not_yet && value != out) not_yet(key, render(*v));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, std::optional<int64_t>& out, Support s, int64_t min) {
  if (!has(key)) {
    value_of(key, out ? std::to_string(*out) : std::string("unset"));
    return false;
  }
  int64_t value = out.value_or(0);
  read(key, value, Support::implemented, min);
  if (s == Support::not_yet && (!out || *out != value)) not_yet(key, std::to_string(value));
  out = value;
  return true;
}

bool BlockReader::read(std::string_view key, std::vector<std::string>& out, Support s) {
  const json* v = value_of(key, out.empty() ? std::string("[]") : json(out).dump());
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
  std::vector<std::string> names(choices.begin(), choices.end());
  const json* v = value_of(key, index < names.size() ? fmt::format("'{}'", names[index]) : std::string("unset"));
  if (v == nullptr) return false;
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
  const json* v = value_of(key, fmt::format("[{}, {}]", first, second));
  if (v == nullptr) return false;
  std::optional<double> a, b;
  if (v->is_array() && v->size() == 2) {
    a = lax_double((*v)[0]);
    b = lax_double((*v)[1]);
  }
  if (!a || !b) type_error(key, "a list of two numbers, e.g. [0.9, 0.999]", *v);
  if (s == Support::not_yet && (*a != first || *b != second)) not_yet(key, render(*v));
  first = *a;
  second = *b;
  return true;
}

BlockReader BlockReader::child(std::string_view key, Keys keys) {
  const json* v = value_of(key, "its defaults");
  return BlockReader(v, key_name(key), *ctx_, keys);
}

const json* BlockReader::raw(std::string_view key) { return lookup(key); }

void BlockReader::accept_unmodelled(std::string_view key) {
  const json* v = lookup(key);
  if (v == nullptr) return;
  bool off = (v->is_boolean() && !v->get<bool>()) || (v->is_number() && v->get<double>() == 0.0) ||
             (v->is_object() && v->empty());
  if (v->is_object()) {
    auto it = v->find("enabled");
    if (it != v->end()) {
      const std::optional<bool> enabled = lax_bool(*it);
      if (enabled && !*enabled) off = true;
    }
  }
  if (!off) not_yet(key, v->is_object() ? std::string("{...}") : render(*v));
}

void BlockReader::ignore(std::string_view key, std::string_view reason) {
  lookup(key);
  if (!contains(key)) return;
  ctx_->ignored.push_back(reason.empty() ? fmt::format("'{}'", key_name(key))
                                         : fmt::format("'{}' ({})", key_name(key), reason));
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
    std::string guess = did_you_mean(key, known_);
    // Where DeepSpeed would ignore the key, a short one must be one edit away to count as a typo: "fp8" (an
    // application's own block) is not a misspelt "fp16".
    if (keys_ == Keys::lenient && !guess.empty() && key.size() <= 4 &&
        edit_distance(key, guess, Case::insensitive) > 1)
      guess.clear();
    if (!guess.empty()) {
      DS_THROW(ConfigError, "[config] unknown key '{}' in {}{}; did you mean '{}'?{}", key_name(key), ctx_->source,
               extra, guess,
               keys_ == Keys::lenient ? " (DeepSpeed would silently ignore the misspelt key and use the default)"
                                      : "");
    }
    if (keys_ == Keys::lenient && extra.empty()) {
      ctx_->ignored.push_back(fmt::format("'{}'", key_name(key)));
      continue;
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
