// OpenAI's completions and chat completions protocols (POST /v1/completions, POST /v1/chat/completions), apart
// from any socket: request bodies parsed and checked into a CompletionRequest or a ChatRequest, the chat template
// that turns messages into a prompt, and the JSON texts sent back (whole responses, server-sent-event chunks,
// log-probability listings, error bodies). A bad request throws ApiError carrying the HTTP status and OpenAI's
// error fields, so the server can answer it exactly; fields we accept only at their default (suffix, tools) are
// refused by name rather than silently ignored. Pure functions: the unit tests drive them without a
// server.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ds/core/error.h"
#include "ds/inference/sampler.h"

namespace ds::data {
class BpeTokenizer;
}

namespace ds::serve {

using OJson = nlohmann::ordered_json;

// An error that goes back to the client as {"error": {"message", "type", "param", "code"}} with `status`.
class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::optional<std::string> param = std::nullopt,
           std::string type = "invalid_request_error", std::optional<std::string> code = std::nullopt);
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::optional<std::string>& param() const { return param_; }
  const std::optional<std::string>& code() const { return code_; }

 private:
  int status_;
  std::string type_;
  std::optional<std::string> param_;
  std::optional<std::string> code_;
};

// {"error":{"message":...,"type":...,"param":<string or null>,"code":<string or null>}}
std::string error_body(std::string_view message, std::string_view type = "invalid_request_error",
                       const std::optional<std::string>& param = std::nullopt,
                       const std::optional<std::string>& code = std::nullopt);
std::string error_body(const ApiError& e);

struct CompletionRequest {
  // Exactly one of the two: text to tokenize, or token ids given by the client.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
  bool prompt_is_ids() const { return !prompt_text.has_value(); }

  inference::SamplingParams sampling;  // max_tokens, temperature, top_p, top_k, stop, seed, penalties, logprobs...
                                       // sampling.n: the sequences to generate, best_of
  int32_t n = 1;               // choices returned: the best n of best_of by mean log-probability per token
  bool echo = false;           // the response's text starts with the prompt (with logprobs: scored, first null)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;           // the served name (also when the client gave none)
};

struct ChatMessage {
  std::string role;     // system, developer, user, assistant or tool
  std::string content;  // text parts joined
};

struct ChatRequest {
  std::vector<ChatMessage> messages;
  inference::SamplingParams sampling;  // "logprobs": true sets sampling.logprobs to top_logprobs (default 0);
                                       // sampling.n: the choices
  bool stream = false;
  bool include_usage = false;
  std::string model;
};

// Parses and checks a chat completions body (OpenAI's fields; max_completion_tokens or max_tokens; vLLM's top_k,
// ignore_eos, stop_token_ids). Throws ApiError as parse_completion_request does.
ChatRequest parse_chat_request(std::string_view body, std::string_view served_model);

// The built-in chat template, ChatML: each message as "<|im_start|>{role}\n{content}<|im_end|>\n", then
// "<|im_start|>assistant\n" for the reply, which ends at kChatEnd (added to the stop strings).
std::string chatml_prompt(const std::vector<ChatMessage>& messages);
inline constexpr std::string_view kChatEnd = "<|im_end|>";

// Parses and checks a request body. served_model: the only name "model" may take (404 model_not_found otherwise).
// Throws ApiError: 400 for malformed JSON, a field of the wrong type (naming field, expected and found type), a
// value out of range, an unsupported value or an unknown field (with the closest known name).
CompletionRequest parse_completion_request(std::string_view body, std::string_view served_model);

// The fields every response object of one completion shares.
struct CompletionHeader {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
  bool chat = false;  // chat.completion objects rather than text_completion
};

// How a token is named in log-probability listings: its text when that is whole UTF-8, else OpenAI's
// "bytes:\xe2\x80" form; "token_id:N" when the server has no tokenizer (vLLM's form).
class TokenNamer {
 public:
  explicit TokenNamer(const data::BpeTokenizer* tokenizer) : tokenizer_(tokenizer) {}
  std::string name(int32_t token) const;
  std::string_view bytes(int32_t token) const;  // the token's raw bytes (empty without a tokenizer)

 private:
  const data::BpeTokenizer* tokenizer_;
};

// Completions' "logprobs" object ({tokens, token_logprobs, top_logprobs, text_offset}) for `entries`, whose texts
// start at text_offset in the returned text (advanced past them). unscored_first: a token listed first with null
// log-probabilities (echo: the prompt's first token).
OJson completion_logprobs(std::span<const inference::TokenLogprob> entries, const TokenNamer& names,
                          int64_t& text_offset, std::optional<int32_t> unscored_first = std::nullopt);
// Chat's {"content": [{token, logprob, bytes, top_logprobs}]}.
OJson chat_logprobs(std::span<const inference::TokenLogprob> entries, const TokenNamer& names);

struct CompletionUsage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

// One choice of a whole response: its text (chat: the message content), why it ended, and the optional parts:
// token_ids (an extension, for token-id prompts) and the log-probability listing (null when not given).
struct CompletionChoice {
  std::string text;
  std::string finish_reason;
  const std::vector<int32_t>* token_ids = nullptr;
  const OJson* logprobs = nullptr;
};

// A whole (non-streamed) response; choice i gets "index": i.
std::string completion_response(const CompletionHeader& header, std::span<const CompletionChoice> choices,
                                const CompletionUsage& usage);
std::string chat_response(const CompletionHeader& header, std::span<const CompletionChoice> choices,
                          const CompletionUsage& usage);

// One server-sent event "data: {...}\n\n" with choices[0] = {index, text_delta, finish_reason (null unless
// given)}. with_usage_field writes "usage": null, as OpenAI does in every chunk when include_usage is set.
std::string stream_chunk(const CompletionHeader& header, int32_t index, std::string_view text_delta,
                         std::optional<std::string_view> finish_reason, const std::vector<int32_t>* token_ids,
                         bool with_usage_field, const OJson* logprobs = nullptr);
// A chat chunk: choices[0].delta holds role and content when given ({} when neither is: the closing chunk).
std::string chat_stream_chunk(const CompletionHeader& header, int32_t index, std::optional<std::string_view> role,
                              std::optional<std::string_view> content, std::optional<std::string_view> finish_reason,
                              bool with_usage_field, const OJson* logprobs = nullptr);
// The closing usage event: "choices": [] and the counts.
std::string stream_usage_chunk(const CompletionHeader& header, const CompletionUsage& usage);
// An error inside a stream (headers already sent): "data: {\"error\": ...}\n\n".
std::string stream_error_event(std::string_view message, std::string_view type);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

}  // namespace ds::serve
