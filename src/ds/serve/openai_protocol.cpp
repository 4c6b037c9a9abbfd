// Parsing and writing OpenAI completion bodies. Checks run in a fixed order (unknown fields, model, prompt, then
// the sampling fields), so a body with several faults always names the same one. Text goes out through
// dump(..., replace): a model can emit a byte sequence that is not UTF-8, and that must cost a U+FFFD in the
// response, not a 500.
#include "ds/serve/openai_protocol.h"

#include <fmt/core.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "ds/core/json_input.h"
#include "ds/core/strings.h"

namespace ds::serve {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

ApiError::ApiError(int status, std::string message, std::optional<std::string> param, std::string type,
                   std::optional<std::string> code)
    : Error(std::move(message)), status_(status), type_(std::move(type)), param_(std::move(param)),
      code_(std::move(code)) {}

namespace {

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// "a string", "an integer", ... as the message names a JSON value's type.
std::string describe_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number with a fraction";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "an unsupported JSON value";
  }
}

// The value as the client sent it, cut short for the message.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

[[noreturn]] void type_error(const std::string& field, const char* expected, const json& found,
                             const char* example) {
  throw ApiError(400,
                 fmt::format("[serve] '{}' must be {}, found {} ({}); send for example \"{}\": {}", field, expected,
                             describe_type(found), shown(found), field, example),
                 field);
}

[[noreturn]] void range_error(const std::string& field, const std::string& allowed, const json& found) {
  throw ApiError(400, fmt::format("[serve] '{}' must be {}, found {}", field, allowed, shown(found)), field);
}

[[noreturn]] void unsupported(const std::string& field, const std::string& allowed, const json& found) {
  throw ApiError(400,
                 fmt::format("[serve] '{}' is supported only as {} by this server, found {}; leave it out", field,
                             allowed, shown(found)),
                 field);
}

bool is_integer(const json& v) { return v.is_number_integer() || v.is_number_unsigned(); }

int64_t get_int(const json& v, const std::string& field, const char* example) {
  if (!is_integer(v)) type_error(field, "an integer", v, example);
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
    range_error(field, "an integer that fits in 64 bits", v);
  }
  return v.get<int64_t>();
}

double get_number(const json& v, const std::string& field, const char* example) {
  if (!v.is_number()) type_error(field, "a number", v, example);
  return v.get<double>();
}

bool get_bool(const json& v, const std::string& field) {
  if (!v.is_boolean()) type_error(field, "a boolean", v, "true");
  return v.get<bool>();
}

// A token id list: [int >= 0 that fits int32, ...].
// `field` names the elements in messages ("prompt[0]" -> "prompt[0][3]"); `param` is the request field.
std::vector<int32_t> get_token_ids(const json& arr, const std::string& field, const std::string& param) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& v = arr[i];
    const std::string name = fmt::format("{}[{}]", field, i);
    if (!is_integer(v)) {
      throw ApiError(400,
                     fmt::format("[serve] '{}' must be a token id (an integer >= 0), found {} ({}); a prompt is a "
                                 "string or an array of token ids, not a mix",
                                 name, describe_type(v), shown(v)),
                     param);
    }
    const bool negative = v.is_number_integer() && v.get<int64_t>() < 0;
    if (negative || v.get<uint64_t>() > uint64_t(std::numeric_limits<int32_t>::max())) {
      throw ApiError(400, fmt::format("[serve] '{}' must be a token id (an integer >= 0 and below 2^31), found {}",
                                      name, shown(v)),
                     param);
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

const std::vector<std::string>& known_fields() {
  static const std::vector<std::string> names = {
      "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream",
      "stream_options", "n", "best_of", "echo", "logprobs", "presence_penalty", "frequency_penalty",
      "logit_bias", "suffix", "user", "ignore_eos", "stop_token_ids"};
  return names;
}

[[noreturn]] void unknown_field(const std::string& name, const std::vector<std::string>& known,
                                const std::string& where) {
  const auto close = closest_names(name, known, 1, typo_distance_limit(name));
  std::string hint = close.empty() ? fmt::format("the fields {} accepts are {}", where, quoted_list(known))
                                   : fmt::format("did you mean '{}'?", close[0]);
  throw ApiError(400, fmt::format("[serve] unknown field '{}' in {}; {}", name, where, hint), name);
}

void parse_prompt(const json& p, CompletionRequest& out) {
  const char* kShapes = "a string, an array of token ids, or an array holding one of those";
  if (p.is_string()) {
    out.prompt_text = p.get<std::string>();
  } else if (p.is_array()) {
    if (p.empty()) throw ApiError(400, "[serve] 'prompt' is an empty array; send the prompt text or its token ids",
                                  std::string("prompt"));
    auto is_prompt = [](const json& e) { return e.is_string() || e.is_array(); };
    const bool nested = std::any_of(p.begin(), p.end(), is_prompt);
    if (nested && !std::all_of(p.begin(), p.end(), is_prompt)) {
      throw ApiError(400, fmt::format("[serve] 'prompt' must be {}, not a mix of token ids and prompts", kShapes),
                     std::string("prompt"));
    }
    if (!nested) {
      out.prompt_ids = get_token_ids(p, "prompt", "prompt");
    } else {
      if (p.size() > 1) {
        throw ApiError(400,
                       fmt::format("[serve] 'prompt' holds {} prompts; this server takes one prompt per request: "
                                   "send one request for each",
                                   p.size()),
                       std::string("prompt"));
      }
      const json& only = p[0];
      if (only.is_string()) {
        out.prompt_text = only.get<std::string>();
      } else {
        if (only.empty()) throw ApiError(400, "[serve] 'prompt[0]' is an empty array of token ids",
                                         std::string("prompt"));
        out.prompt_ids = get_token_ids(only, "prompt[0]", "prompt");
      }
    }
  } else {
    throw ApiError(400, fmt::format("[serve] 'prompt' must be {}, found {} ({})", kShapes, describe_type(p), shown(p)),
                   std::string("prompt"));
  }
}

std::vector<std::string> parse_stop(const json& v) {
  std::vector<std::string> stop;
  if (v.is_string()) {
    stop.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > 4) {
      throw ApiError(400, fmt::format("[serve] 'stop' holds {} strings; at most 4 are allowed", v.size()),
                     std::string("stop"));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) {
        throw ApiError(400,
                       fmt::format("[serve] 'stop[{}]' must be a string, found {} ({})", i, describe_type(v[i]),
                                   shown(v[i])),
                       std::string("stop"));
      }
      stop.push_back(v[i].get<std::string>());
    }
  } else {
    type_error("stop", "a string or an array of up to 4 strings", v, "[\"\\n\"]");
  }
  for (const auto& s : stop) {
    if (s.empty()) throw ApiError(400, "[serve] 'stop' holds an empty string, which would match at once; remove it",
                                  std::string("stop"));
  }
  return stop;
}

}  // namespace

std::string error_body(std::string_view message, std::string_view type, const std::optional<std::string>& param,
                       const std::optional<std::string>& code) {
  ojson err;
  err["message"] = std::string(message);
  err["type"] = std::string(type);
  err["param"] = param ? ojson(*param) : ojson(nullptr);
  err["code"] = code ? ojson(*code) : ojson(nullptr);
  ojson body;
  body["error"] = std::move(err);
  return dump(body);
}

std::string error_body(const ApiError& e) { return error_body(e.what(), e.type(), e.param(), e.code()); }

CompletionRequest parse_completion_request(std::string_view body, std::string_view served_model) {
  json j;
  JsonLimits limits;
  limits.max_depth = 16;  // a completion request is flat: a prompt list of token lists is 2 deep
  const std::string problem = parse_json_bounded(body, limits, j);
  if (!problem.empty()) {
    throw ApiError(400, fmt::format("[serve] the request body is not valid JSON ({}); send a JSON object such as "
                                    "{{\"prompt\": \"Hello\", \"max_tokens\": 16}}",
                                    problem));
  }
  if (!j.is_object()) {
    throw ApiError(400, fmt::format("[serve] the request body must be a JSON object, found {}; send for example "
                                    "{{\"prompt\": \"Hello\", \"max_tokens\": 16}}",
                                    describe_type(j)));
  }
  for (const auto& [key, value] : j.items()) {
    if (std::find(known_fields().begin(), known_fields().end(), key) == known_fields().end()) {
      unknown_field(key, known_fields(), "a completion request");
    }
  }

  CompletionRequest out;
  out.model = std::string(served_model);
  // A field that is absent or null takes its default, as in OpenAI's API.
  auto given = [&](const char* name) -> const json* {
    auto it = j.find(name);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };

  if (const json* v = given("model")) {
    if (!v->is_string()) type_error("model", "a string", *v, "\"dspeed\"");
    if (v->get<std::string>() != served_model) {
      throw ApiError(404,
                     fmt::format("[serve] the model '{}' does not exist; this server serves '{}' (GET /v1/models "
                                 "lists it)",
                                 v->get<std::string>(), served_model),
                     std::string("model"), "invalid_request_error", std::string("model_not_found"));
    }
  }

  const json* prompt = given("prompt");
  if (!prompt) {
    throw ApiError(400, "[serve] the request has no 'prompt'; send the prompt as text or as an array of token ids",
                   std::string("prompt"));
  }
  parse_prompt(*prompt, out);

  auto& s = out.sampling;
  if (const json* v = given("max_tokens")) {
    const int64_t n = get_int(*v, "max_tokens", "16");
    if (n < 1 || n > std::numeric_limits<int32_t>::max()) range_error("max_tokens", "an integer >= 1", *v);
    s.max_tokens = static_cast<int32_t>(n);
  }
  if (const json* v = given("temperature")) {
    const double t = get_number(*v, "temperature", "0.7");
    if (!(t >= 0 && t <= 2)) range_error("temperature", "a number in [0, 2] (0: greedy)", *v);
    s.temperature = static_cast<float>(t);
  }
  if (const json* v = given("top_p")) {
    const double p = get_number(*v, "top_p", "0.9");
    if (!(p > 0 && p <= 1)) range_error("top_p", "a number in (0, 1]", *v);
    s.top_p = static_cast<float>(p);
  }
  if (const json* v = given("top_k")) {
    const int64_t k = get_int(*v, "top_k", "40");
    if (k < -1 || k > std::numeric_limits<int32_t>::max()) range_error("top_k", "an integer >= -1 (-1 or 0: all tokens)", *v);
    s.top_k = k < 0 ? 0 : static_cast<int32_t>(k);
  }
  if (const json* v = given("stop")) s.stop = parse_stop(*v);
  if (const json* v = given("seed")) {
    if (!is_integer(*v)) type_error("seed", "an integer", *v, "42");
    s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
  }
  if (const json* v = given("ignore_eos")) s.ignore_eos = get_bool(*v, "ignore_eos");
  if (const json* v = given("stop_token_ids")) {
    if (!v->is_array()) type_error("stop_token_ids", "an array of token ids", *v, "[50256]");
    s.stop_token_ids = get_token_ids(*v, "stop_token_ids", "stop_token_ids");
  }

  if (const json* v = given("stream")) out.stream = get_bool(*v, "stream");
  if (const json* v = given("stream_options")) {
    if (!v->is_object()) type_error("stream_options", "an object", *v, "{\"include_usage\": true}");
    if (!out.stream) {
      throw ApiError(400, "[serve] 'stream_options' is allowed only when 'stream' is true; set \"stream\": true or "
                          "leave 'stream_options' out",
                     std::string("stream_options"));
    }
    for (const auto& [key, value] : v->items()) {
      if (key != "include_usage") unknown_field("stream_options." + key, {"stream_options.include_usage"},
                                                "'stream_options'");
    }
    if (auto it = v->find("include_usage"); it != v->end() && !it->is_null()) {
      out.include_usage = get_bool(*it, "stream_options.include_usage");
    }
  }

  // Accepted at their defaults only: refused by name rather than silently ignored.
  if (const json* v = given("n")) {
    if (get_int(*v, "n", "1") != 1) unsupported("n", "1 (one completion per request)", *v);
  }
  if (const json* v = given("best_of")) {
    if (get_int(*v, "best_of", "1") != 1) unsupported("best_of", "1", *v);
  }
  if (const json* v = given("echo")) {
    if (get_bool(*v, "echo")) unsupported("echo", "false (the prompt is not repeated)", *v);
  }
  if (const json* v = given("logprobs")) {
    if (!is_integer(*v)) type_error("logprobs", "an integer or null", *v, "null");
    unsupported("logprobs", "null (log probabilities are not returned)", *v);
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const json* v = given(name)) {
      const double x = get_number(*v, name, "0");
      if (!(x >= -2 && x <= 2)) range_error(name, "a number in [-2, 2]", *v);
      if (x != 0) unsupported(name, "0 (no penalties)", *v);
    }
  }
  if (const json* v = given("logit_bias")) {
    if (!v->is_object()) type_error("logit_bias", "an object", *v, "{}");
    if (!v->empty()) unsupported("logit_bias", "{} (no biases)", *v);
  }
  if (const json* v = given("suffix")) {
    if (!v->is_string()) type_error("suffix", "a string", *v, "null");
    if (!v->get<std::string>().empty()) unsupported("suffix", "null (no insertion)", *v);
  }
  if (const json* v = given("user")) {
    if (!v->is_string()) type_error("user", "a string", *v, "\"user-1234\"");
  }
  return out;
}

namespace {

ojson choice(std::string_view text, std::optional<std::string_view> finish_reason,
             const std::vector<int32_t>* token_ids) {
  ojson c;
  c["text"] = std::string(text);
  c["index"] = 0;
  c["logprobs"] = nullptr;
  c["finish_reason"] = finish_reason ? ojson(std::string(*finish_reason)) : ojson(nullptr);
  if (token_ids) c["token_ids"] = *token_ids;
  return c;
}

ojson head(const CompletionHeader& h) {
  ojson j;
  j["id"] = h.id;
  j["object"] = "text_completion";
  j["created"] = h.created;
  j["model"] = h.model;
  return j;
}

ojson usage_json(const CompletionUsage& u) {
  ojson j;
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  return j;
}

std::string sse(const ojson& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

std::string completion_response(const CompletionHeader& header, std::string_view text,
                                std::string_view finish_reason, const CompletionUsage& usage,
                                const std::vector<int32_t>* token_ids) {
  ojson j = head(header);
  j["choices"] = ojson::array({choice(text, finish_reason, token_ids)});
  j["usage"] = usage_json(usage);
  return dump(j);
}

std::string stream_chunk(const CompletionHeader& header, std::string_view text_delta,
                         std::optional<std::string_view> finish_reason, const std::vector<int32_t>* token_ids,
                         bool with_usage_field) {
  ojson j = head(header);
  j["choices"] = ojson::array({choice(text_delta, finish_reason, token_ids)});
  if (with_usage_field) j["usage"] = nullptr;
  return sse(j);
}

std::string stream_usage_chunk(const CompletionHeader& header, const CompletionUsage& usage) {
  ojson j = head(header);
  j["choices"] = ojson::array();
  j["usage"] = usage_json(usage);
  return sse(j);
}

std::string stream_error_event(std::string_view message, std::string_view type) {
  return "data: " + error_body(message, type) + "\n\n";
}

}  // namespace ds::serve
