// The bounded JSON parser (json_input.h). The depth scan walks the text once outside string literals; offsets in
// messages are turned into line and column here, so every caller reports a position the same way.
#include "ds/core/json_input.h"

#include <fmt/format.h>

#include <algorithm>

namespace ds {

namespace {

std::string position(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1, column = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return fmt::format("line {}, column {}", line, column);
}

// The offset of the first bracket past the depth limit, or npos.
size_t too_deep_at(std::string_view text, int max_depth) {
  int depth = 0;
  size_t at = std::string_view::npos;
  scan_outside_json_strings(text, [&](size_t& i) {
    const char ch = text[i];
    if (ch == '{' || ch == '[') {
      if (++depth > max_depth && at == std::string_view::npos) {
        at = i;
        i = text.size();  // done
      }
    } else if (ch == '}' || ch == ']') {
      --depth;
    }
  });
  return at;
}

}  // namespace

std::string json_bounds_problem(std::string_view text, const JsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return limits.max_bytes >= (size_t(1) << 20)
               ? fmt::format("it is larger than {} MiB", limits.max_bytes >> 20)
               : fmt::format("it is larger than {} bytes", limits.max_bytes);
  }
  if (const size_t at = too_deep_at(text, limits.max_depth); at != std::string_view::npos)
    return fmt::format("it nests objects and lists deeper than {} levels ({})", limits.max_depth, position(text, at));
  return {};
}

std::string parse_json_bounded(std::string_view text, const JsonLimits& limits, nlohmann::json& out) {
  if (std::string problem = json_bounds_problem(text, limits); !problem.empty()) return problem;
  try {
    out = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/true, limits.comments);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based offset of the character that failed.
    std::string detail = e.what();
    const size_t syntax = detail.find("syntax error");
    if (syntax != std::string::npos) detail = detail.substr(syntax);
    return fmt::format("{}: {}", position(text, e.byte == 0 ? 0 : e.byte - 1), detail);
  } catch (const nlohmann::json::exception& e) {  // out_of_range: a number past a double's range
    std::string detail = e.what();
    const size_t bracket = detail.find("] ");
    if (bracket != std::string::npos) detail = detail.substr(bracket + 2);
    return fmt::format("a number is out of range ({}); numbers must fit a double", detail);
  }
  return {};
}

std::string json_excerpt(const nlohmann::json& value, size_t max_chars) {
  // A short list of scalars (a shape, a pair of offsets) is shown whole: dump() then recurses one level only.
  const auto scalar = [](const nlohmann::json& e) { return e.is_primitive(); };
  const bool flat_list = value.is_array() && value.size() <= 16 && std::all_of(value.begin(), value.end(), scalar);
  if (value.is_array() && !flat_list)
    return fmt::format("[... {} item{}]", value.size(), value.size() == 1 ? "" : "s");
  if (value.is_object()) return fmt::format("{{... {} key{}}}", value.size(), value.size() == 1 ? "" : "s");
  std::string s = value.dump();
  if (s.size() > max_chars) s = s.substr(0, max_chars > 3 ? max_chars - 3 : 0) + "...";
  return s;
}

}  // namespace ds
