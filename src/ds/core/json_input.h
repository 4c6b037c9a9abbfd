// Untrusted JSON — HTTP bodies, config and model files, checkpoint manifests, safetensors headers, tokenizer
// files — read through one bounded parser. nlohmann's parser follows nesting as deep as the text goes, and its
// dump() and destructor recurse, so a 200 KB body of '[' would overflow the stack: the text is scanned first,
// without recursion, and refused past a size or a depth. Syntax errors and numbers out of range (1e400) come back as
// one message with line and column, never as a library exception, so every caller turns them into its own clear
// error (a 400, a ConfigError, an IoError naming the file).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace ds {

struct JsonLimits {
  size_t max_bytes = size_t(16) << 20;
  int max_depth = 64;     // objects and arrays nested inside each other
  bool comments = false;  // allow // and /* */ comments
};

// Parses `text` into `out`. Returns an empty string on success, else what is wrong, for a message: "it is larger
// than 16 MiB", "it nests deeper than 64 levels (line 1, column 65)", "line 3, column 7: syntax error ...", "line 1,
// column 9: number 1e400 is out of range".
std::string parse_json_bounded(std::string_view text, const JsonLimits& limits, nlohmann::json& out);
// The size and depth checks alone, for a parser of its own (the ds_config reader): empty when within the limits.
std::string json_bounds_problem(std::string_view text, const JsonLimits& limits);

// Calls f(i) for each index of `text` outside JSON string literals, in order; f may move i past what it consumes
// (the ds_config reader blanks comments this way). Strings are skipped with their escapes.
template <typename Text, typename F>
void scan_outside_json_strings(const Text& text, F&& f) {
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '"') {
        in_string = false;
      }
    } else if (ch == '"') {
      in_string = true;
    } else {
      f(i);
    }
  }
}

// The value as a T when it is an integer (not a float, not a bool) that T can hold; nullopt otherwise. nlohmann's
// get<int>() converts a float or wraps a large integer silently (9.2e19 into int64 is undefined behaviour).
template <typename T>
std::optional<T> json_integer(const nlohmann::json& v) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) return std::nullopt;
    return static_cast<T>(u);
  }
  if (!v.is_number_integer()) return std::nullopt;
  const auto i = v.get<int64_t>();
  if constexpr (std::is_signed_v<T>) {
    if (i < int64_t{std::numeric_limits<T>::min()} || i > int64_t{std::numeric_limits<T>::max()}) return std::nullopt;
  } else {
    if (i < 0 || static_cast<uint64_t>(i) > uint64_t{std::numeric_limits<T>::max()}) return std::nullopt;
  }
  return static_cast<T>(i);
}

// A short excerpt of a value for messages, never recursing into nested containers: a scalar as JSON, a list of at
// most 16 scalars as JSON, cut to max_chars; any other container as "[... 3 items]" or "{... 2 keys}".
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = 60);

}  // namespace ds
