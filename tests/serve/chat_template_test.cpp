// The chat-template interpreter against Jinja2 itself: tests/fixtures/chat_templates/chat_templates.json holds
// templates in the styles models publish (ChatML, Llama 2, Zephyr, header-style with namespace and whitespace
// control, Gemma-style, and one using every construct we support), each rendered by Jinja2 in transformers'
// environment over several conversations (make_fixtures.py). Every render must match byte for byte, and every
// raise_exception must come back as a 400 with the template's message. Then what a template may not do: fail to
// parse with a line and column, loop without end, nest without bound.
#include "ds/serve/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ds/core/error.h"

namespace ds::serve {
namespace {

using json = nlohmann::json;

json fixtures() {
  std::ifstream in(std::string(DS_SOURCE_DIR) + "/tests/fixtures/chat_templates/chat_templates.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

TEST(ChatTemplate, RendersAsJinjaDoes) {
  const json all = fixtures();
  ASSERT_GE(all.size(), 6u);
  int renders = 0, refusals = 0;
  for (const json& t : all) {
    SCOPED_TRACE(t["name"].get<std::string>());
    const ChatTemplate tmpl = ChatTemplate::parse(t["template"].get<std::string>(), t["name"].get<std::string>());
    for (const json& c : t["cases"]) {
      SCOPED_TRACE(c["conversation"].get<std::string>() + (c["add_generation_prompt"].get<bool>() ? " +gen" : ""));
      ChatTemplateInput in;
      for (const json& m : c["messages"]) in.messages.push_back({m["role"], m["content"]});
      in.add_generation_prompt = c["add_generation_prompt"];
      in.bos_token = t["bos_token"];
      in.eos_token = t["eos_token"];
      if (c.contains("expected")) {
        EXPECT_EQ(tmpl.render(in), c["expected"].get<std::string>());
        ++renders;
      } else {
        try {
          tmpl.render(in);
          ADD_FAILURE() << "rendered, but Jinja2 raised: " << c["error"];
        } catch (const ApiError& e) {
          EXPECT_EQ(e.status(), 400);
          EXPECT_NE(std::string(e.what()).find(c["error"].get<std::string>()), std::string::npos) << e.what();
          ++refusals;
        }
      }
    }
  }
  EXPECT_GE(renders, 50);
  EXPECT_GE(refusals, 4);
}

void expect_parse_error(const std::string& source, const std::string& part) {
  try {
    ChatTemplate::parse(source, "t.jinja");
    ADD_FAILURE() << "parsed: " << source.substr(0, 80);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("t.jinja, line"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, WhatItCannotReadIsRefusedWithLineAndColumn) {
  expect_parse_error("{% macro m() %}x{% endmacro %}", "'macro' is not supported");
  expect_parse_error("a\n{{ messages", "never closed");
  expect_parse_error("{% if x %}never ends", "ends before {% endif %}");
  expect_parse_error("{% endfor %}", "without a matching");
  expect_parse_error("{{ 1 ! 2 }}", "'!' alone");
  expect_parse_error("{{ (a, b) }}", "tuples");
  expect_parse_error("{% set x %}y{% endset %}", "block {% set %}");
  expect_parse_error("{{ messages | frobnicate }}", "the filter 'frobnicate'");
  expect_parse_error("{% if x is odd_looking %}{% endif %}", "the test 'odd_looking'");
  expect_parse_error("{{ load_file('x') }}", "the function 'load_file'");
}

TEST(ChatTemplate, RenderingIsBounded) {
  ChatTemplateInput in;
  in.messages = {{"user", "hi"}};
  // Nesting far past the limit is a parse error, not a stack overflow.
  expect_parse_error("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}", "nests too deeply");
  expect_parse_error(std::string(300, ' ') + [] {
    std::string s;
    for (int i = 0; i < 300; ++i) s += "{% if true %}";
    return s;
  }(), "nest too deeply");
  const ChatTemplate runaway = ChatTemplate::parse("{% for i in range(100000000) %}x{% endfor %}", "t");
  try {
    runaway.render(in);
    ADD_FAILURE() << "a hundred million iterations ran";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("loop iterations"), std::string::npos) << e.what();
  }
  const ChatTemplate huge = ChatTemplate::parse(
      "{% for i in range(200000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", "t");
  try {
    huge.render(in);
    ADD_FAILURE() << "9.6 MB of output";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("MiB"), std::string::npos) << e.what();
  }
  const ChatTemplate bad_types = ChatTemplate::parse("{{ 1 + 'a' }}", "t");
  EXPECT_THROW(bad_types.render(in), ConfigError);
}

TEST(ChatTemplate, FromTokenizerConfig) {
  const std::string dir = ::testing::TempDir() + "/chat_format";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/tokenizer_config.json";
  {
    std::ofstream(path) << R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default",
        "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}]})";
  }
  const ChatFormat f = load_chat_format(dir, "");
  ASSERT_TRUE(f.jinja);
  EXPECT_EQ(f.bos_token, "<s>");
  EXPECT_EQ(f.eos_token, "</s>");
  EXPECT_EQ(f.origin, path);
  ChatTemplateInput in;
  in.messages = {{"user", "a"}, {"assistant", "b"}};
  in.bos_token = f.bos_token;
  in.eos_token = f.eos_token;
  EXPECT_EQ(f.jinja->render(in), "<s>a</s>b</s>");
  { std::ofstream(path) << R"({"eos_token": "</s>"})"; }
  EXPECT_FALSE(load_chat_format(dir, "").jinja);
}

}  // namespace
}  // namespace ds::serve
