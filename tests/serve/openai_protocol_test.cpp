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

struct BadCase {
  const char* body;
  int status;
  const char* param;  // nullptr: null
  const char* message_part;
};

TEST(OpenAiProtocol, PenaltiesBiasesLogprobsAndEcho) {
  const CompletionRequest r = parse(R"({"prompt": "x", "presence_penalty": 0.5, "frequency_penalty": -1,
      "logit_bias": {"50256": -100, "13": 2.5}, "logprobs": 3, "echo": true, "max_tokens": 0})");
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.0f);
  ASSERT_EQ(r.sampling.logit_bias.size(), 2u);
  EXPECT_EQ(r.sampling.logit_bias[0], (std::pair<int32_t, float>{13, 2.5f}));  // nlohmann orders keys
  EXPECT_EQ(r.sampling.logit_bias[1], (std::pair<int32_t, float>{50256, -100.0f}));
  EXPECT_EQ(r.sampling.logprobs, 3);
  EXPECT_TRUE(r.echo);
  EXPECT_TRUE(r.sampling.prompt_logprobs);
  EXPECT_EQ(r.sampling.max_tokens, 0);  // scoring the prompt only
  const CompletionRequest several = parse(R"({"prompt": "x", "n": 2, "best_of": 5})");
  EXPECT_EQ(several.n, 2);
  EXPECT_EQ(several.sampling.n, 5);  // the sequences generated
  EXPECT_EQ(parse(R"({"prompt": "x", "n": 3, "stream": true})").sampling.n, 3);
  const CompletionRequest plain = parse(R"({"prompt": "x", "echo": true})");
  EXPECT_FALSE(plain.sampling.prompt_logprobs);  // echo alone repeats the text, scores nothing
  EXPECT_EQ(plain.sampling.logprobs, -1);
}

ChatRequest parse_chat(const std::string& body) { return parse_chat_request(body, "tiny"); }

TEST(OpenAiProtocol, ChatRequestsAndTheChatMlTemplate) {
  const ChatRequest r = parse_chat(R"({"model": "tiny", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}, {"role": "user", "content": "And?", "name": "bob"}],
      "max_completion_tokens": 7, "logprobs": true, "top_logprobs": 2, "temperature": 0, "stream": true,
      "stream_options": {"include_usage": true}, "response_format": {"type": "text"}, "tools": []})");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.sampling.max_tokens, 7);
  EXPECT_EQ(r.sampling.logprobs, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(chatml_prompt(r.messages),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
            "<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(parse_chat(R"({"messages": [{"role": "user", "content": "a"}], "max_tokens": 3})").sampling.max_tokens, 3);
  EXPECT_EQ(parse_chat(R"({"messages": [{"role": "user", "content": "a"}]})").sampling.max_tokens, -1)
      << "no limit given: the server fills in the rest of the context";
  EXPECT_EQ(parse_chat(R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true})").sampling.logprobs, 0);
  EXPECT_EQ(parse_chat(R"({"messages": [{"role": "user", "content": "a"}], "n": 4})").sampling.n, 4);

  const BadCase cases[] = {
      {R"({"messages": []})", 400, "messages", "empty"},
      {R"({"messages": "hi"})", 400, "messages", "an array of messages"},
      {R"({"messages": [{"role": "robot", "content": "a"}]})", 400, "messages", "'robot'"},
      {R"({"messages": [{"role": "user"}]})", 400, "messages", "no 'content'"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400, "messages", "text only"},
      {R"({"messages": [{"role": "user", "content": "a", "tool_calls": []}]})", 400, "tool_calls", "unknown field"},
      {R"({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})", 400, "top_logprobs",
       "needs \"logprobs\": true"},
      {R"({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]})", 400, "tools",
       "does not call tools"},
      {R"({"messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_object"}})", 400,
       "response_format", "only as"},
      {R"({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})", 400,
       "max_completion_tokens", ">= 1"},
      {R"({"messages": [{"role": "user", "content": "a"}], "prompt": "x"})", 400, "prompt", "unknown field"},
      {R"({"prompt": "x"})", 400, "prompt", "unknown field"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.body);
    try {
      parse_chat(c.body);
      ADD_FAILURE() << "accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), c.status);
      EXPECT_EQ(e.param().value_or("<null>"), c.param);
      EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << e.what();
    }
  }
}

TEST(OpenAiProtocol, LogprobListingsAndChatResponses) {
  const TokenNamer names(nullptr);  // no tokenizer: tokens are named by id, and have no bytes
  const std::vector<inference::TokenLogprob> lps = {{7, -0.5f, {{7, -0.5f}, {9, -1.5f}}}, {9, -2.0f, {}}};
  int64_t offset = 0;
  const OJson c = completion_logprobs(lps, names, offset, 3);
  EXPECT_EQ(json::parse(c.dump()), json::parse(R"({"tokens": ["token_id:3", "token_id:7", "token_id:9"],
      "token_logprobs": [null, -0.5, -2.0], "top_logprobs": [null, {"token_id:7": -0.5, "token_id:9": -1.5}, {}],
      "text_offset": [0, 0, 0]})"));
  const OJson chat = chat_logprobs(lps, names);
  EXPECT_EQ(json::parse(chat.dump()), json::parse(R"({"content": [
      {"token": "token_id:7", "logprob": -0.5, "bytes": [], "top_logprobs": [
          {"token": "token_id:7", "logprob": -0.5, "bytes": []}, {"token": "token_id:9", "logprob": -1.5, "bytes": []}]},
      {"token": "token_id:9", "logprob": -2.0, "bytes": [], "top_logprobs": []}]})"));

  const CompletionHeader h{"chatcmpl-1", 5, "tiny", true};
  const std::vector<CompletionChoice> listed = {{"Hi", "stop", nullptr, &chat}};
  EXPECT_EQ(json::parse(chat_response(h, listed, {3, 1}))["choices"][0]["logprobs"], json::parse(chat.dump()));
  const std::vector<CompletionChoice> two = {{"Hi", "stop"}, {"Yo", "length"}};
  EXPECT_EQ(json::parse(chat_response(h, two, {3, 3})), json::parse(R"({"id": "chatcmpl-1",
      "object": "chat.completion", "created": 5, "model": "tiny", "choices": [{"index": 0,
      "message": {"role": "assistant", "content": "Hi"}, "logprobs": null, "finish_reason": "stop"}, {"index": 1,
      "message": {"role": "assistant", "content": "Yo"}, "logprobs": null, "finish_reason": "length"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})"));
  EXPECT_EQ(chat_stream_chunk(h, 0, "assistant", "", std::nullopt, false),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"tiny\","
            "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
            "\"finish_reason\":null}]}\n\n");
  EXPECT_EQ(json::parse(chat_stream_chunk(h, 2, std::nullopt, std::nullopt, "length", true).substr(6))["choices"][0],
            json::parse(R"({"index": 2, "delta": {}, "logprobs": null, "finish_reason": "length"})"));
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
      {R"({"prompt": "a", "n": 0})", 400, "n", "[1, 64]"},
      {R"({"prompt": "a", "n": 65})", 400, "n", "[1, 64]"},
      {R"({"prompt": "a", "n": 3, "best_of": 2})", 400, "best_of", "at least 'n'"},
      {R"({"prompt": "a", "best_of": 3, "stream": true})", 400, "best_of", "cannot stream"},
      {R"({"prompt": "a", "echo": 1})", 400, "echo", "must be a boolean"},
      {R"({"prompt": "a", "logprobs": 21})", 400, "logprobs", "[0, 20]"},
      {R"({"prompt": "a", "logprobs": true})", 400, "logprobs", "an integer in [0, 20]"},
      {R"({"prompt": "a", "max_tokens": 0, "echo": true})", 400, "max_tokens", "only scoring a prompt"},
      {R"({"prompt": "a", "presence_penalty": -2.5})", 400, "presence_penalty", "[-2, 2]"},
      {R"({"prompt": "a", "frequency_penalty": 3})", 400, "frequency_penalty", "[-2, 2]"},
      {R"({"prompt": "a", "logit_bias": {"50256": -101}})", 400, "logit_bias", "[-100, 100]"},
      {R"({"prompt": "a", "logit_bias": {"x1": 1}})", 400, "logit_bias", "token ids written as strings"},
      {R"({"prompt": "a", "logit_bias": {"-1": 1}})", 400, "logit_bias", "token ids written as strings"},
      {R"({"prompt": "a", "logit_bias": [1]})", 400, "logit_bias", "an object of token id to bias"},
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
  const std::vector<CompletionChoice> one = {{"Hi there", "length"}};
  EXPECT_EQ(json::parse(completion_response(h, one, {3, 2})), json::parse(R"({
      "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny",
      "choices": [{"text": "Hi there", "index": 0, "logprobs": null, "finish_reason": "length"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})"));
  const std::vector<int32_t> ids = {17, 18};
  const std::vector<CompletionChoice> two = {{"x", "length"}, {"ab", "stop", &ids}};
  const json with_ids = json::parse(completion_response(h, two, {1, 3}))["choices"][1];
  EXPECT_EQ(with_ids["index"], 1);
  EXPECT_EQ(with_ids["token_ids"], json::parse("[17, 18]"));
  EXPECT_EQ(with_ids["finish_reason"], "stop");
}

TEST(OpenAiProtocol, InvalidUtf8BecomesReplacementCharacter) {
  const CompletionHeader h{"cmpl-1", 1, "tiny"};
  const std::string text = std::string("a") + char(0xE2) + char(0x82) + "b";  // a cut 3-byte character
  const std::vector<CompletionChoice> one = {{text, "length"}};
  const json j = json::parse(completion_response(h, one, {1, 1}));
  EXPECT_EQ(j["choices"][0]["text"], "a\xEF\xBF\xBD" "b");
}

TEST(OpenAiProtocol, StreamChunks) {
  const CompletionHeader h{"cmpl-9", 5, "tiny"};
  const std::string c = stream_chunk(h, 0, "He", std::nullopt, nullptr, false);
  ASSERT_EQ(c.rfind("data: ", 0), 0u);
  ASSERT_EQ(c.substr(c.size() - 2), "\n\n");
  EXPECT_EQ(json::parse(c.substr(6)), json::parse(R"({"id": "cmpl-9", "object": "text_completion", "created": 5,
      "model": "tiny", "choices": [{"text": "He", "index": 0, "logprobs": null, "finish_reason": null}]})"));

  const std::vector<int32_t> ids = {4};
  const json last = json::parse(stream_chunk(h, 3, "", "length", &ids, true).substr(6));
  EXPECT_EQ(last["choices"][0]["index"], 3);
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
