// The bounded JSON parser: a hostile nesting depth or size is refused with a position, not followed into a stack
// overflow; numbers out of range and syntax errors come back as messages with line and column; excerpts of
// containers never recurse.
#include <gtest/gtest.h>

#include <string>

#include "ds/core/json_input.h"

namespace ds {
namespace {

TEST(JsonInput, ParsesWithinTheLimits) {
  nlohmann::json j;
  EXPECT_EQ(parse_json_bounded(R"({"a": [1, {"b": [2]}], "s": "[[[{"})", JsonLimits{}, j), "");
  EXPECT_EQ(j["a"][1]["b"][0], 2);
  EXPECT_EQ(j["s"], "[[[{");  // brackets inside strings do not count
  JsonLimits with_comments;
  with_comments.comments = true;
  EXPECT_EQ(parse_json_bounded("// c\n{\"x\": 1 /* d */}", with_comments, j), "");
  EXPECT_NE(parse_json_bounded("// c\n{\"x\": 1}", JsonLimits{}, j), "");
}

TEST(JsonInput, DeepNestingIsRefusedWithItsPosition) {
  // 100,000 levels in a 200 KB text: nlohmann would recurse that deep in dump() and the destructor.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  nlohmann::json j;
  const std::string problem = parse_json_bounded(deep, JsonLimits{}, j);
  EXPECT_NE(problem.find("deeper than 64 levels (line 1, column 65)"), std::string::npos) << problem;
  JsonLimits tight;
  tight.max_depth = 2;
  EXPECT_EQ(parse_json_bounded("[[1]]", tight, j), "");
  EXPECT_NE(parse_json_bounded("[[[1]]]", tight, j), "");
}

TEST(JsonInput, SizeOutOfRangeNumbersAndSyntax) {
  nlohmann::json j;
  JsonLimits small;
  small.max_bytes = 10;
  EXPECT_EQ(parse_json_bounded("[1, 2, 3, 4]", small, j), "it is larger than 10 bytes");
  std::string problem = parse_json_bounded(R"({"max_tokens": 1e400})", JsonLimits{}, j);
  EXPECT_NE(problem.find("1e400"), std::string::npos) << problem;
  EXPECT_NE(problem.find("numbers must fit a double"), std::string::npos) << problem;
  problem = parse_json_bounded("{\n  \"a\": 1,\n  \"b\" 2\n}", JsonLimits{}, j);
  EXPECT_EQ(problem.rfind("line 3, column 7: syntax error", 0), 0u) << problem;
}

TEST(JsonInput, ExcerptsAreShortAndFlat) {
  EXPECT_EQ(json_excerpt(nlohmann::json::parse("[1, [2, [3]]]")), "[... 2 items]");
  EXPECT_EQ(json_excerpt(nlohmann::json::parse("[2, -3]")), "[2,-3]");
  EXPECT_EQ(json_excerpt(nlohmann::json::parse(R"({"a": {"b": 1}})")), "{... 1 key}");
  EXPECT_EQ(json_excerpt(nlohmann::json(std::string(100, 'x')), 10), "\"xxxxxx...");
  EXPECT_EQ(json_excerpt(nlohmann::json(2.5)), "2.5");
}

}  // namespace
}  // namespace ds
