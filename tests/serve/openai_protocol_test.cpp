// The completions protocol without a server: every field's parse, every kind of bad body (wrong type, out of range,
// unsupported, unknown with a suggestion, malformed JSON) mapped to the status and `param` OpenAI would give, and
// the response texts compared with hand-written JSON.
#include "ds/serve/openai_protocol.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace ds::serve {
namespace {

using json = nlohmann::json;

CompletionRequest parse(const std::string& body) { return parse_completion_request(body, "tiny"); }

struct Rejection {
  int status = 0;
  std::optional<std::string> param;
  std::string message;
  std::optional<std::string> code;
};

Rejection reject(const std::string& body) {
  try {
    parse(body);
  } catch (const ApiError& e) {
    return {e.status(), e.param(), e.what(), e.code()};
  }
  ADD_FAILURE() << "accepted: " << body;
  return {};
}

TEST(OpenAiProtocol, TextPromptTakesOpenAiDefaults) {
  const CompletionRequest r = parse(R"({"prompt": "Hello"})");
  ASSERT_TRUE(r.prompt_text.has_value());
  EXPECT_EQ(*r.prompt_text, "Hello");
  EXPECT_FALSE(r.prompt_is_ids());
  EXPECT_EQ(r.sampling.max_tokens, 16);
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FALSE(r.sampling.seed.has_value());
  EXPECT_TRUE(r.sampling.stop.empty());
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_EQ(r.model, "tiny");
}

TEST(OpenAiProtocol, PromptShapes) {
  EXPECT_EQ(parse(R"({"prompt": [464, 3290, 0]})").prompt_ids, (std::vector<int32_t>{464, 3290, 0}));
  EXPECT_TRUE(parse(R"({"prompt": [464]})").prompt_is_ids());
  EXPECT_EQ(*parse(R"({"prompt": ["one string"]})").prompt_text, "one string");
  EXPECT_EQ(parse(R"({"prompt": [[7, 8]]})").prompt_ids, (std::vector<int32_t>{7, 8}));
}

TEST(OpenAiProtocol, EveryFieldParses) {
  const CompletionRequest r = parse(R"({
      "model": "tiny", "prompt": "x", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
      "stop": ["\n", "END"], "seed": 42, "stream": true, "stream_options": {"include_usage": true},
      "n": 1, "best_of": 1, "echo": false, "logprobs": null, "presence_penalty": 0, "frequency_penalty": 0.0,
      "logit_bias": {}, "suffix": null, "user": "u-1", "ignore_eos": true, "stop_token_ids": [50256]})");
  EXPECT_EQ(r.sampling.max_tokens, 5);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"\n", "END"}));
  ASSERT_TRUE(r.sampling.seed.has_value());
  EXPECT_EQ(*r.sampling.seed, 42u);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.sampling.ignore_eos);
  EXPECT_EQ(r.sampling.stop_token_ids, (std::vector<int32_t>{50256}));
}

TEST(OpenAiProtocol, NullMeansDefaultAndSmallForms) {
  const CompletionRequest r =
      parse(R"({"prompt": "x", "max_tokens": null, "stop": "##", "top_k": -1, "seed": -3, "stream": null})");
  EXPECT_EQ(r.sampling.max_tokens, 16);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"##"}));
  EXPECT_EQ(r.sampling.top_k, 0);  // vLLM's -1: no limit
  EXPECT_EQ(*r.sampling.seed, static_cast<uint64_t>(int64_t{-3}));
  EXPECT_FALSE(r.stream);
}

struct BadCase {
  const char* body;
  int status;
  const char* param;  // nullptr: null
  const char* message_part;
};

TEST(OpenAiProtocol, EachBadFieldIsNamed) {
  const BadCase cases[] = {
      {R"({"prompt": "a", "max_tokens": "5"})", 400, "max_tokens", "must be an integer, found a string"},
      {R"({"prompt": "a", "max_tokens": 1.5})", 400, "max_tokens", "found a number with a fraction"},
      {R"({"prompt": "a", "max_tokens": 0})", 400, "max_tokens", "an integer >= 1"},
      {R"({"prompt": "a", "temperature": "hot"})", 400, "temperature", "must be a number, found a string"},
      {R"({"prompt": "a", "temperature": 2.5})", 400, "temperature", "[0, 2]"},
      {R"({"prompt": "a", "top_p": 0})", 400, "top_p", "(0, 1]"},
      {R"({"prompt": "a", "top_p": [1]})", 400, "top_p", "found an array"},
      {R"({"prompt": "a", "top_k": -2})", 400, "top_k", "-1"},
      {R"({"prompt": "a", "top_k": true})", 400, "top_k", "found a boolean"},
      {R"({"prompt": "a", "stop": 5})", 400, "stop", "a string or an array of up to 4 strings"},
      {R"({"prompt": "a", "stop": ["a", 1]})", 400, "stop", "'stop[1]' must be a string"},
      {R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})", 400, "stop", "at most 4"},
      {R"({"prompt": "a", "stop": [""]})", 400, "stop", "empty string"},
      {R"({"prompt": "a", "seed": "x"})", 400, "seed", "must be an integer"},
      {R"({"prompt": "a", "stream": "yes"})", 400, "stream", "must be a boolean, found a string"},
      {R"({"prompt": "a", "stream_options": {"include_usage": true}})", 400, "stream_options", "only when 'stream'"},
      {R"({"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}})", 400,
       "stream_options.include_usage", "must be a boolean"},
      {R"({"prompt": "a", "stream": true, "stream_options": {"usage": true}})", 400, "stream_options.usage",
       "unknown field"},
      {R"({"prompt": "a", "n": 2})", 400, "n", "only as 1"},
      {R"({"prompt": "a", "best_of": 3})", 400, "best_of", "only as 1"},
      {R"({"prompt": "a", "echo": true})", 400, "echo", "only as false"},
      {R"({"prompt": "a", "logprobs": 2})", 400, "logprobs", "only as null"},
      {R"({"prompt": "a", "presence_penalty": 0.5})", 400, "presence_penalty", "only as 0"},
      {R"({"prompt": "a", "frequency_penalty": 3})", 400, "frequency_penalty", "[-2, 2]"},
      {R"({"prompt": "a", "logit_bias": {"50256": -100}})", 400, "logit_bias", "only as {}"},
      {R"({"prompt": "a", "suffix": "tail"})", 400, "suffix", "only as null"},
      {R"({"prompt": "a", "user": 7})", 400, "user", "must be a string"},
      {R"({"prompt": "a", "ignore_eos": 1})", 400, "ignore_eos", "must be a boolean"},
      {R"({"prompt": "a", "stop_token_ids": [-1]})", 400, "stop_token_ids", "'stop_token_ids[0]' must be a token id"},
      {R"({"prompt": "a", "model": 3})", 400, "model", "must be a string"},
      {R"({"max_tokens": 3})", 400, "prompt", "no 'prompt'"},
      {R"({"prompt": null})", 400, "prompt", "no 'prompt'"},
      {R"({"prompt": 12})", 400, "prompt", "found an integer"},
      {R"({"prompt": []})", 400, "prompt", "empty array"},
      {R"({"prompt": [[]]})", 400, "prompt", "empty array"},
      {R"({"prompt": ["a", "b"]})", 400, "prompt", "one prompt per request"},
      {R"({"prompt": [[1], [2]]})", 400, "prompt", "one prompt per request"},
      {R"({"prompt": [1, "a"]})", 400, "prompt", "not a mix"},
      {R"({"prompt": [1, -4]})", 400, "prompt", "'prompt[1]' must be a token id"},
      {R"({"prompt": [1, 2.5]})", 400, "prompt", "prompt[1]"},
      {R"({"prompt": [3000000000]})", 400, "prompt", "below 2^31"},
      {R"({"prompt": "a", "max_token": 4})", 400, "max_token", "did you mean 'max_tokens'?"},
      {R"({"prompt": "a", "temprature": 0})", 400, "temprature", "did you mean 'temperature'?"},
      {R"({"prompt": "a", "zzzzzzzzzzzz": 0})", 400, "zzzzzzzzzzzz", "'max_tokens'"},
      {R"({"prompt": "a", "max_tokens": 3)", 400, nullptr, "not valid JSON"},
      {R"(prompt=hello)", 400, nullptr, "not valid JSON"},
      {R"("just a string")", 400, nullptr, "must be a JSON object, found a string"},
      {R"({"prompt": "a", "model": "gpt-4"})", 404, "model", "'gpt-4' does not exist"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.body);
    const Rejection r = reject(c.body);
    EXPECT_EQ(r.status, c.status);
    if (c.param) {
      EXPECT_EQ(r.param.value_or("<null>"), c.param);
    } else {
      EXPECT_FALSE(r.param.has_value()) << *r.param;
    }
    EXPECT_NE(r.message.find(c.message_part), std::string::npos) << r.message;
    EXPECT_EQ(r.message.rfind("[serve] ", 0), 0u) << r.message;
  }
}

// Hostile bodies are 400s with a reason: nesting 100,000 levels deep (once a stack overflow), and a number past a
// double's range (once a 500).
TEST(OpenAiProtocol, HostileBodiesAreBadRequests) {
  const Rejection deep = reject(R"({"prompt": )" + std::string(100000, '[') + std::string(100000, ']') + "}");
  EXPECT_EQ(deep.status, 400);
  EXPECT_NE(deep.message.find("deeper than 16 levels"), std::string::npos) << deep.message;
  const Rejection huge = reject(R"({"prompt": "Hi", "max_tokens": 1e400})");
  EXPECT_EQ(huge.status, 400);
  EXPECT_NE(huge.message.find("1e400"), std::string::npos) << huge.message;
}

TEST(OpenAiProtocol, UnknownModelIsModelNotFound) {
  const Rejection r = reject(R"({"prompt": "a", "model": "gpt-4"})");
  EXPECT_EQ(r.code.value_or(""), "model_not_found");
}

TEST(OpenAiProtocol, ErrorBodyIsOpenAiShaped) {
  EXPECT_EQ(error_body("bad", "invalid_request_error", std::string("top_p")),
            R"({"error":{"message":"bad","type":"invalid_request_error","param":"top_p","code":null}})");
  EXPECT_EQ(error_body("full", "rate_limit_exceeded", std::nullopt, std::string("rate_limit_exceeded")),
            R"({"error":{"message":"full","type":"rate_limit_exceeded","param":null,"code":"rate_limit_exceeded"}})");
  const ApiError e(404, "gone", std::string("model"), "invalid_request_error", std::string("model_not_found"));
  EXPECT_EQ(json::parse(error_body(e)),
            json::parse(R"({"error":{"message":"gone","type":"invalid_request_error","param":"model",
                           "code":"model_not_found"}})"));
}

TEST(OpenAiProtocol, CompletionResponse) {
  const CompletionHeader h{"cmpl-1", 1700000000, "tiny"};
  EXPECT_EQ(json::parse(completion_response(h, "Hi there", "length", {3, 2})), json::parse(R"({
      "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
      "choices": [{"text": "Hi there", "index": 0, "logprobs": null, "finish_reason": "length"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})"));
  const std::vector<int32_t> ids = {17, 18};
  const json with_ids = json::parse(completion_response(h, "ab", "stop", {1, 2}, &ids));
  EXPECT_EQ(with_ids["choices"][0]["token_ids"], json::parse("[17, 18]"));
  EXPECT_EQ(with_ids["choices"][0]["finish_reason"], "stop");
}

TEST(OpenAiProtocol, InvalidUtf8BecomesReplacementCharacter) {
  const CompletionHeader h{"cmpl-1", 1, "tiny"};
  const std::string text = std::string("a") + char(0xE2) + char(0x82) + "b";  // a cut 3-byte character
  const json j = json::parse(completion_response(h, text, "length", {1, 1}));
  EXPECT_EQ(j["choices"][0]["text"], "a\xEF\xBF\xBD" "b");
}

TEST(OpenAiProtocol, StreamChunks) {
  const CompletionHeader h{"cmpl-9", 5, "tiny"};
  const std::string c = stream_chunk(h, "He", std::nullopt, nullptr, false);
  ASSERT_EQ(c.rfind("data: ", 0), 0u);
  ASSERT_EQ(c.substr(c.size() - 2), "\n\n");
  EXPECT_EQ(json::parse(c.substr(6)), json::parse(R"({"id": "cmpl-9", "object": "text_completion", "created": 5,
      "model": "tiny", "choices": [{"text": "He", "index": 0, "logprobs": null, "finish_reason": null}]})"));

  const std::vector<int32_t> ids = {4};
  const json last = json::parse(stream_chunk(h, "", "length", &ids, true).substr(6));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["choices"][0]["token_ids"], json::parse("[4]"));
  EXPECT_TRUE(last.contains("usage") && last["usage"].is_null());

  const json usage = json::parse(stream_usage_chunk(h, {7, 3}).substr(6));
  EXPECT_TRUE(usage["choices"].is_array() && usage["choices"].empty());
  EXPECT_EQ(usage["usage"], json::parse(R"({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})"));
  EXPECT_EQ(kStreamDone, "data: [DONE]\n\n");

  const std::string err = stream_error_event("boom", "server_error");
  EXPECT_EQ(json::parse(err.substr(6))["error"]["message"], "boom");
}

}  // namespace
}  // namespace ds::serve
