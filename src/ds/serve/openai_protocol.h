// OpenAI's legacy completions protocol (POST /v1/completions), apart from any socket: the request body parsed and
// checked into a CompletionRequest, and the JSON texts sent back (a whole response, server-sent-event chunks,
// error bodies). A bad request throws ApiError carrying the HTTP status and OpenAI's error fields, so the server
// can answer it exactly; fields we accept but only at their default (n, echo, logprobs, penalties, ...) are
// refused by name rather than silently ignored. Pure functions: the unit tests drive them without a server.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ds/core/error.h"
#include "ds/inference/sampler.h"

namespace ds::serve {

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

  inference::SamplingParams sampling;  // max_tokens, temperature, top_p, top_k, stop, seed, ignore_eos, ...
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;           // the served name (also when the client gave none)
};

// Parses and checks a request body. served_model: the only name "model" may take (404 model_not_found otherwise).
// Throws ApiError: 400 for malformed JSON, a field of the wrong type (naming field, expected and found type), a
// value out of range, an unsupported value or an unknown field (with the closest known name).
CompletionRequest parse_completion_request(std::string_view body, std::string_view served_model);

// The fields every response object of one completion shares.
struct CompletionHeader {
  std::string id;  // "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
};

struct CompletionUsage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

// A whole (non-streamed) response. token_ids (an extension) is written only when given: for token-id prompts.
std::string completion_response(const CompletionHeader& header, std::string_view text,
                                 std::string_view finish_reason, const CompletionUsage& usage,
                                 const std::vector<int32_t>* token_ids = nullptr);

// One server-sent event "data: {...}\n\n" with choices[0].text = text_delta and finish_reason null unless given.
// with_usage_field writes "usage": null, as OpenAI does in every chunk when include_usage is set.
std::string stream_chunk(const CompletionHeader& header, std::string_view text_delta,
                         std::optional<std::string_view> finish_reason, const std::vector<int32_t>* token_ids,
                         bool with_usage_field);
// The closing usage event: "choices": [] and the counts.
std::string stream_usage_chunk(const CompletionHeader& header, const CompletionUsage& usage);
// An error inside a stream (headers already sent): "data: {\"error\": ...}\n\n".
std::string stream_error_event(std::string_view message, std::string_view type);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

}  // namespace ds::serve
