// Internal to the config parser: typed reading of one JSON object of ds_config.json.
// Each read() names a key, so the set of keys a block understands is exactly the list of reads in its parser;
// finish() then deals with whatever else is in the object. A strict block (DeepSpeed validates it with pydantic or
// passes it as keyword arguments) refuses it; a lenient one (DeepSpeed reads it by dictionary lookups, so it never
// sees other keys) lists it as ignored, unless it is a near miss of a known key: a typo is refused with a "did you
// mean" in both, since DeepSpeed silently dropping a misspelt setting is the mistake we exist to catch.
// Values are coerced as pydantic's lax mode does ("2" and true are integers, 0 and "yes" are booleans).
// A key read with Support::not_yet that is given a non-default value is listed among the features not implemented.
// Only json_fwd.hpp is included so that this header stays light; the readers are defined in config_reader.cpp.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ds::config::detail {

enum class Support { implemented, not_yet };
// How finish() treats keys that no read asked for (see the file comment).
enum class Keys { strict, lenient };

// Shared by all readers of one parse: where the text came from and what was found. Features not implemented,
// ignored keys and unresolved "auto" values are gathered so that each kind is reported once, as one list.
struct ParseContext {
  std::string source;
  std::vector<std::string> warnings;
  std::vector<std::string> not_implemented;  // "'key' = value" of features deepspeed.cpp does not have yet
  std::vector<std::string> ignored;          // keys DeepSpeed itself ignores
  std::vector<std::string> auto_defaults;    // "'key' -> default" for "auto" values nothing resolved
  void warn(std::string message);
  // Appends one warning per non-empty list above (called once, at the end of a parse).
  void summarise();
};

// "a.b" joined path; an empty prefix gives just the key.
std::string join_key(std::string_view path, std::string_view key);
// The best candidate within edit distance max(2, len(key)/3) (more shared words first, then closer), else empty.
std::string did_you_mean(std::string_view key, const std::vector<std::string>& candidates);
// Short rendering of a JSON value for messages (strings quoted, long values cut).
std::string render(const nlohmann::json& value);

class BlockReader {
 public:
  // obj: the block's JSON value or nullptr when the block is absent; it must be an object (or null / "auto",
  // which count as absent), else ConfigError. path: "" for the top level, otherwise e.g. "zero_optimization".
  BlockReader(const nlohmann::json* obj, std::string path, ParseContext& ctx, Keys keys = Keys::strict);

  const std::string& path() const { return path_; }
  ParseContext& ctx() const { return *ctx_; }
  bool present() const { return obj_ != nullptr; }
  // The key is present with a value other than null or "auto" (does not mark it known).
  bool has(std::string_view key) const;
  // The key is present at all, whatever its value (does not mark it known).
  bool contains(std::string_view key) const;
  std::string key_name(std::string_view key) const { return join_key(path_, key); }

  // Typed reads. Each marks the key as known and returns true when the key was given (not absent, null or
  // "auto"); otherwise `out` keeps its default. Wrong types and out-of-range values throw ConfigError.
  bool read(std::string_view key, bool& out, Support s = Support::implemented);
  bool read(std::string_view key, int64_t& out, Support s = Support::implemented,
            int64_t min = std::numeric_limits<int64_t>::min(), int64_t max = std::numeric_limits<int64_t>::max());
  bool read(std::string_view key, int& out, Support s = Support::implemented,
            int min = std::numeric_limits<int>::min(), int max = std::numeric_limits<int>::max());
  bool read(std::string_view key, double& out, Support s = Support::implemented,
            double min = -std::numeric_limits<double>::infinity(),
            double max = std::numeric_limits<double>::infinity());
  bool read(std::string_view key, std::string& out, Support s = Support::implemented);
  bool read(std::string_view key, std::optional<int64_t>& out, Support s = Support::implemented,
            int64_t min = std::numeric_limits<int64_t>::min());
  bool read(std::string_view key, std::vector<std::string>& out, Support s = Support::implemented);
  // A string that must be one of `choices` (exact match); writes the matching choice's index.
  bool read_choice(std::string_view key, size_t& index, std::initializer_list<std::string_view> choices,
                   Support s = Support::implemented);
  // A list of exactly two numbers (e.g. Adam's betas).
  bool read_pair(std::string_view key, double& first, double& second, Support s = Support::implemented);

  // A nested object; the child reader is absent when the key is missing, null or "auto".
  BlockReader child(std::string_view key, Keys keys = Keys::strict);
  // Marks a key known and returns its raw value (nullptr when absent, null or "auto").
  const nlohmann::json* raw(std::string_view key);
  // A DeepSpeed setting deepspeed.cpp does not model at all: accepted as any value; listed among the features not
  // implemented unless it is "off" (false, 0, null, an empty object or {"enabled": false}).
  void accept_unmodelled(std::string_view key);
  // Lists `key` among the keys DeepSpeed ignores, with the reason (e.g. "has no effect below stage 3").
  void ignore(std::string_view key, std::string_view reason);
  // An extra sentence for finish() when `key` is found unknown (e.g. a documented-but-invalid DeepSpeed key).
  void hint(std::string key, std::string text);

  // Deals with the keys no read asked for: a near miss of a known key is a ConfigError with the suggestion; any
  // other is a ConfigError in a strict block and listed as ignored in a lenient one.
  void finish();

 private:
  const nlohmann::json* lookup(std::string_view key);  // marks known; nullptr for absent/null/"auto"
  // lookup(), and an "auto" value is listed with the default it leaves in place.
  const nlohmann::json* value_of(std::string_view key, const std::string& default_text);
  void not_yet(std::string_view key, const std::string& value_text);
  [[noreturn]] void type_error(std::string_view key, std::string_view expected, const nlohmann::json& v) const;

  const nlohmann::json* obj_;
  std::string path_;
  ParseContext* ctx_;
  Keys keys_;
  std::vector<std::string> known_;
  std::vector<std::pair<std::string, std::string>> hints_;
};

}  // namespace ds::config::detail
