// Parsing and writing OpenAI completion and chat completion bodies. Checks run in a fixed order (unknown fields,
// model, prompt or messages, then the sampling fields), so a body with several faults always names the same one. Text goes out through
// dump(..., replace): a model can emit a byte sequence that is not UTF-8, and that must cost a U+FFFD in the
// response, not a 500.
#include "ds/serve/openai_protocol.h"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "ds/core/json_input.h"
#include "ds/core/strings.h"
#include "ds/data/bpe_tokenizer.h"

namespace ds::serve {

using json = nlohmann::json;
using ojson = OJson;

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

// The fields both endpoints take, then each one's own.
const std::vector<std::string> kSharedFields = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "stream_options", "n",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user", "ignore_eos", "stop_token_ids"};

std::vector<std::string> with_shared(std::initializer_list<const char*> own) {
  std::vector<std::string> names = kSharedFields;
  names.insert(names.end(), own.begin(), own.end());
  return names;
}

const std::vector<std::string>& completion_fields() {
  static const std::vector<std::string> names = with_shared({"prompt", "best_of", "echo", "suffix"});
  return names;
}

const std::vector<std::string>& chat_fields() {
  static const std::vector<std::string> names =
      with_shared({"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                   "parallel_tool_calls"});
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

namespace {

// A request body: a JSON object of known fields. A field that is absent or null takes its default, as in OpenAI's
// API.
class Body {
 public:
  Body(std::string_view body, const std::vector<std::string>& known, const char* what, const char* example) {
    JsonLimits limits;
    limits.max_depth = 16;  // requests are flat: a prompt list of token lists is 2 deep, chat content parts 4
    const std::string problem = parse_json_bounded(body, limits, j_);
    if (!problem.empty()) {
      throw ApiError(400, fmt::format("[serve] the request body is not valid JSON ({}); send a JSON object such as "
                                      "{}",
                                      problem, example));
    }
    if (!j_.is_object()) {
      throw ApiError(400, fmt::format("[serve] the request body must be a JSON object, found {}; send for example {}",
                                      describe_type(j_), example));
    }
    for (const auto& [key, value] : j_.items()) {
      if (std::find(known.begin(), known.end(), key) == known.end()) unknown_field(key, known, what);
    }
  }
  const json* given(const char* name) const {
    auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }

 private:
  json j_;
};

void check_model(const Body& b, std::string_view served_model) {
  if (const json* v = b.given("model")) {
    if (!v->is_string()) type_error("model", "a string", *v, "\"dspeed\"");
    if (v->get<std::string>() != served_model) {
      throw ApiError(404,
                     fmt::format("[serve] the model '{}' does not exist; this server serves '{}' (GET /v1/models "
                                 "lists it)",
                                 v->get<std::string>().substr(0, 200), served_model),
                     std::string("model"), "invalid_request_error", std::string("model_not_found"));
    }
  }
}

int32_t parse_max_tokens(const json& v, const char* field, int32_t least) {
  const int64_t n = get_int(v, field, "16");
  if (n < least || n > std::numeric_limits<int32_t>::max()) {
    range_error(field, least == 0 ? "an integer >= 0 (0 only with echo, to score the prompt)" : "an integer >= 1", v);
  }
  return static_cast<int32_t>(n);
}

std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& v) {
  if (!v.is_object()) type_error("logit_bias", "an object of token id to bias", v, "{\"50256\": -100}");
  constexpr size_t kMaxBiases = 1024;
  if (v.size() > kMaxBiases) {
    throw ApiError(400, fmt::format("[serve] 'logit_bias' holds {} entries; at most {} are allowed", v.size(),
                                    kMaxBiases),
                   std::string("logit_bias"));
  }
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, bias] : v.items()) {
    char* end = nullptr;
    errno = 0;
    const long long id = key.empty() ? -1 : std::strtoll(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || errno != 0 || id < 0 || id > std::numeric_limits<int32_t>::max()) {
      throw ApiError(400, fmt::format("[serve] 'logit_bias' keys must be token ids written as strings (\"50256\"), "
                                      "found \"{}\"",
                                      key.substr(0, 40)),
                     std::string("logit_bias"));
    }
    const double b = get_number(bias, "logit_bias", "-100");
    if (!(b >= -100 && b <= 100)) range_error("logit_bias", "a map to numbers in [-100, 100]", bias);
    out.emplace_back(static_cast<int32_t>(id), static_cast<float>(b));
  }
  return out;
}

constexpr int64_t kMaxChoices = 64;  // sequences per request (OpenAI allows 128)

int32_t parse_choices(const Body& b, const char* field) {
  const json* v = b.given(field);
  if (!v) return 1;
  const int64_t n = get_int(*v, field, "2");
  if (n < 1 || n > kMaxChoices) range_error(field, fmt::format("an integer in [1, {}]", kMaxChoices), *v);
  return static_cast<int32_t>(n);
}

int32_t parse_top_logprobs(const json& v, const char* field) {
  const int64_t k = get_int(v, field, "5");
  if (k < 0 || k > 20) range_error(field, "an integer in [0, 20]", v);
  return static_cast<int32_t>(k);
}

// The fields both endpoints share, but max_tokens and logprobs (their meanings differ).
void parse_shared(const Body& b, inference::SamplingParams& s, bool& stream, bool& include_usage) {
  if (const json* v = b.given("temperature")) {
    const double t = get_number(*v, "temperature", "0.7");
    if (!(t >= 0 && t <= 2)) range_error("temperature", "a number in [0, 2] (0: greedy)", *v);
    s.temperature = static_cast<float>(t);
  }
  if (const json* v = b.given("top_p")) {
    const double p = get_number(*v, "top_p", "0.9");
    if (!(p > 0 && p <= 1)) range_error("top_p", "a number in (0, 1]", *v);
    s.top_p = static_cast<float>(p);
  }
  if (const json* v = b.given("top_k")) {
    const int64_t k = get_int(*v, "top_k", "40");
    if (k < -1 || k > std::numeric_limits<int32_t>::max()) {
      range_error("top_k", "an integer >= -1 (-1 or 0: all tokens)", *v);
    }
    s.top_k = k < 0 ? 0 : static_cast<int32_t>(k);
  }
  if (const json* v = b.given("stop")) s.stop = parse_stop(*v);
  if (const json* v = b.given("seed")) {
    if (!is_integer(*v)) type_error("seed", "an integer", *v, "42");
    s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
  }
  if (const json* v = b.given("ignore_eos")) s.ignore_eos = get_bool(*v, "ignore_eos");
  if (const json* v = b.given("stop_token_ids")) {
    if (!v->is_array()) type_error("stop_token_ids", "an array of token ids", *v, "[50256]");
    s.stop_token_ids = get_token_ids(*v, "stop_token_ids", "stop_token_ids");
  }
  if (const json* v = b.given("presence_penalty")) {
    const double x = get_number(*v, "presence_penalty", "0.5");
    if (!(x >= -2 && x <= 2)) range_error("presence_penalty", "a number in [-2, 2]", *v);
    s.presence_penalty = static_cast<float>(x);
  }
  if (const json* v = b.given("frequency_penalty")) {
    const double x = get_number(*v, "frequency_penalty", "0.5");
    if (!(x >= -2 && x <= 2)) range_error("frequency_penalty", "a number in [-2, 2]", *v);
    s.frequency_penalty = static_cast<float>(x);
  }
  if (const json* v = b.given("logit_bias")) s.logit_bias = parse_logit_bias(*v);

  if (const json* v = b.given("stream")) stream = get_bool(*v, "stream");
  if (const json* v = b.given("stream_options")) {
    if (!v->is_object()) type_error("stream_options", "an object", *v, "{\"include_usage\": true}");
    if (!stream) {
      throw ApiError(400, "[serve] 'stream_options' is allowed only when 'stream' is true; set \"stream\": true or "
                          "leave 'stream_options' out",
                     std::string("stream_options"));
    }
    for (const auto& [key, value] : v->items()) {
      if (key != "include_usage") unknown_field("stream_options." + key, {"stream_options.include_usage"},
                                                "'stream_options'");
    }
    if (auto it = v->find("include_usage"); it != v->end() && !it->is_null()) {
      include_usage = get_bool(*it, "stream_options.include_usage");
    }
  }
  if (const json* v = b.given("user")) {
    if (!v->is_string()) type_error("user", "a string", *v, "\"user-1234\"");
  }
}

constexpr const char* kCompletionExample = "{\"prompt\": \"Hello\", \"max_tokens\": 16}";
constexpr const char* kChatExample = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}";

// A message's content: a string, or an array of {"type": "text", "text": ...} parts, joined.
std::string message_content(const json& c, size_t i) {
  const std::string field = fmt::format("messages[{}].content", i);
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) type_error(field, "a string or an array of text parts", c, "\"Hello\"");
  std::string out;
  for (size_t k = 0; k < c.size(); ++k) {
    const json& part = c[k];
    const std::string name = fmt::format("{}[{}]", field, k);
    if (!part.is_object()) type_error(name, "an object such as {\"type\": \"text\", \"text\": \"Hello\"}", part, "{}");
    const auto type = part.find("type");
    if (type == part.end() || !type->is_string() || type->get<std::string>() != "text") {
      throw ApiError(400, fmt::format("[serve] '{}' is a {} part; this model reads text only, so send parts of "
                                      "type \"text\"",
                                      name, type != part.end() && type->is_string() ? type->get<std::string>()
                                                                                   : std::string("typeless")),
                     std::string("messages"));
    }
    const auto text = part.find("text");
    if (text == part.end() || !text->is_string()) type_error(name + ".text", "a string", part, "\"Hello\"");
    out += text->get<std::string>();
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const json& v) {
  if (!v.is_array()) type_error("messages", "an array of messages", v, "[{\"role\": \"user\", \"content\": \"Hi\"}]");
  if (v.empty()) throw ApiError(400, "[serve] 'messages' is empty; send at least one message", std::string("messages"));
  static const std::vector<std::string> kRoles = {"system", "developer", "user", "assistant", "tool"};
  static const std::vector<std::string> kKeys = {"role", "content", "name", "tool_call_id"};
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) type_error(where, "an object with 'role' and 'content'", m, "{\"role\": \"user\"}");
    for (const auto& [key, value] : m.items()) {
      if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end()) unknown_field(key, kKeys, "'" + where + "'");
    }
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) type_error(where + ".role", "a string", m.value("role", json()), "\"user\"");
    const std::string r = role->get<std::string>();
    if (std::find(kRoles.begin(), kRoles.end(), r) == kRoles.end()) {
      throw ApiError(400, fmt::format("[serve] '{}.role' is '{}'; it must be one of {}", where, r.substr(0, 40),
                                      quoted_list(kRoles)),
                     std::string("messages"));
    }
    const auto content = m.find("content");
    ChatMessage msg;
    msg.role = r;
    if (content != m.end() && !content->is_null()) msg.content = message_content(*content, i);
    else if (r != "assistant") {
      throw ApiError(400, fmt::format("[serve] '{}' has no 'content'; only an assistant message may leave it out",
                                      where),
                     std::string("messages"));
    }
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body, std::string_view served_model) {
  const Body b(body, completion_fields(), "a completion request", kCompletionExample);
  CompletionRequest out;
  out.model = std::string(served_model);
  check_model(b, served_model);

  const json* prompt = b.given("prompt");
  if (!prompt) {
    throw ApiError(400, "[serve] the request has no 'prompt'; send the prompt as text or as an array of token ids",
                   std::string("prompt"));
  }
  parse_prompt(*prompt, out);

  auto& s = out.sampling;
  if (const json* v = b.given("echo")) out.echo = get_bool(*v, "echo");
  if (const json* v = b.given("max_tokens")) s.max_tokens = parse_max_tokens(*v, "max_tokens", out.echo ? 0 : 1);
  if (const json* v = b.given("logprobs")) {
    if (v->is_boolean()) type_error("logprobs", "an integer in [0, 20] (alternatives per token) or null", *v, "5");
    s.logprobs = parse_top_logprobs(*v, "logprobs");
  }
  s.prompt_logprobs = out.echo && s.logprobs >= 0;
  if (s.max_tokens == 0 && !s.prompt_logprobs) {
    throw ApiError(400, "[serve] 'max_tokens' is 0, which only scoring a prompt allows; set \"echo\": true and "
                        "\"logprobs\": 0 or more, or ask for at least one token",
                   std::string("max_tokens"));
  }
  parse_shared(b, s, out.stream, out.include_usage);
  out.n = parse_choices(b, "n");
  s.n = b.given("best_of") ? parse_choices(b, "best_of") : out.n;
  if (s.n < out.n) {
    throw ApiError(400, fmt::format("[serve] 'best_of' ({}) must be at least 'n' ({}): the best n of best_of "
                                    "completions are returned", s.n, out.n),
                   std::string("best_of"));
  }
  if (s.n > out.n && out.stream) {
    throw ApiError(400, "[serve] 'best_of' above 'n' cannot stream: the best completions are known only at the end; "
                        "leave out 'stream' or 'best_of'",
                   std::string("best_of"));
  }
  if (const json* v = b.given("suffix")) {
    if (!v->is_string()) type_error("suffix", "a string", *v, "null");
    if (!v->get<std::string>().empty()) unsupported("suffix", "null (no insertion)", *v);
  }
  return out;
}

ChatRequest parse_chat_request(std::string_view body, std::string_view served_model) {
  const Body b(body, chat_fields(), "a chat completion request", kChatExample);
  ChatRequest out;
  out.model = std::string(served_model);
  check_model(b, served_model);
  const json* messages = b.given("messages");
  if (!messages) {
    throw ApiError(400, fmt::format("[serve] the request has no 'messages'; send for example {}", kChatExample),
                   std::string("messages"));
  }
  out.messages = parse_messages(*messages);

  auto& s = out.sampling;
  if (const json* v = b.given("max_completion_tokens")) {
    s.max_tokens = parse_max_tokens(*v, "max_completion_tokens", 1);
  } else if (const json* v2 = b.given("max_tokens")) {
    s.max_tokens = parse_max_tokens(*v2, "max_tokens", 1);
  } else {
    s.max_tokens = -1;  // the rest of the context (the server fills it in once the prompt's length is known)
  }
  const json* logprobs = b.given("logprobs");
  const bool want_logprobs = logprobs && get_bool(*logprobs, "logprobs");
  if (const json* v = b.given("top_logprobs")) {
    const int32_t k = parse_top_logprobs(*v, "top_logprobs");
    if (!want_logprobs) {
      throw ApiError(400, "[serve] 'top_logprobs' needs \"logprobs\": true", std::string("top_logprobs"));
    }
    s.logprobs = k;
  } else if (want_logprobs) {
    s.logprobs = 0;
  }
  parse_shared(b, s, out.stream, out.include_usage);
  s.n = parse_choices(b, "n");
  if (const json* v = b.given("response_format")) {
    if (!v->is_object() || v->value("type", std::string()) != "text" || v->size() != 1) {
      unsupported("response_format", "{\"type\": \"text\"}", *v);
    }
  }
  for (const char* name : {"tools", "tool_choice"}) {
    if (const json* v = b.given(name)) {
      const bool empty = (v->is_array() && v->empty()) || (v->is_string() && v->get<std::string>() == "none");
      if (!empty) unsupported(name, "empty (this server does not call tools)", *v);
    }
  }
  if (const json* v = b.given("parallel_tool_calls")) get_bool(*v, "parallel_tool_calls");
  return out;
}

std::string chatml_prompt(const std::vector<ChatMessage>& messages) {
  std::string out;
  for (const ChatMessage& m : messages) {
    out.append("<|im_start|>").append(m.role).append("\n").append(m.content).append(kChatEnd).append("\n");
  }
  out.append("<|im_start|>assistant\n");
  return out;
}

namespace {

ojson choice(int32_t index, std::string_view text, std::optional<std::string_view> finish_reason,
             const std::vector<int32_t>* token_ids, const OJson* logprobs) {
  ojson c;
  c["text"] = std::string(text);
  c["index"] = index;
  c["logprobs"] = logprobs ? *logprobs : ojson(nullptr);
  c["finish_reason"] = finish_reason ? ojson(std::string(*finish_reason)) : ojson(nullptr);
  if (token_ids) c["token_ids"] = *token_ids;
  return c;
}

ojson head(const CompletionHeader& h, bool chunk) {
  ojson j;
  j["id"] = h.id;
  j["object"] = !h.chat ? "text_completion" : chunk ? "chat.completion.chunk" : "chat.completion";
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

ojson byte_list(std::string_view b) {
  ojson out = ojson::array();
  for (const char ch : b) out.push_back(static_cast<unsigned char>(ch));
  return out;
}

}  // namespace

std::string TokenNamer::name(int32_t token) const {
  if (!tokenizer_) return fmt::format("token_id:{}", token);
  const std::string_view b = tokenizer_->token_bytes(token);
  if (is_utf8(b)) return std::string(b);
  std::string out = "bytes:";
  for (const char ch : b) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(ch));
  return out;
}

std::string_view TokenNamer::bytes(int32_t token) const {
  return tokenizer_ ? tokenizer_->token_bytes(token) : std::string_view();
}

OJson completion_logprobs(std::span<const inference::TokenLogprob> entries, const TokenNamer& names,
                          int64_t& text_offset, std::optional<int32_t> unscored_first) {
  ojson tokens = ojson::array(), token_logprobs = ojson::array(), top = ojson::array(), offsets = ojson::array();
  auto add = [&](int32_t token, const inference::TokenLogprob* lp) {
    tokens.push_back(names.name(token));
    token_logprobs.push_back(lp ? ojson(lp->logprob) : ojson(nullptr));
    if (lp) {
      ojson alternatives = ojson::object();
      for (const auto& [id, logprob] : lp->top) alternatives[names.name(id)] = logprob;
      top.push_back(std::move(alternatives));
    } else {
      top.push_back(nullptr);
    }
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(names.bytes(token).size());
  };
  if (unscored_first) add(*unscored_first, nullptr);
  for (const auto& e : entries) add(e.token, &e);
  ojson out;
  out["tokens"] = std::move(tokens);
  out["token_logprobs"] = std::move(token_logprobs);
  out["top_logprobs"] = std::move(top);
  out["text_offset"] = std::move(offsets);
  return out;
}

OJson chat_logprobs(std::span<const inference::TokenLogprob> entries, const TokenNamer& names) {
  ojson content = ojson::array();
  for (const auto& e : entries) {
    ojson item;
    item["token"] = names.name(e.token);
    item["logprob"] = e.logprob;
    item["bytes"] = byte_list(names.bytes(e.token));
    ojson top = ojson::array();
    for (const auto& [id, logprob] : e.top) {
      ojson alt;
      alt["token"] = names.name(id);
      alt["logprob"] = logprob;
      alt["bytes"] = byte_list(names.bytes(id));
      top.push_back(std::move(alt));
    }
    item["top_logprobs"] = std::move(top);
    content.push_back(std::move(item));
  }
  ojson out;
  out["content"] = std::move(content);
  return out;
}

std::string completion_response(const CompletionHeader& header, std::span<const CompletionChoice> choices,
                                const CompletionUsage& usage) {
  ojson j = head(header, false);
  j["choices"] = ojson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const CompletionChoice& c = choices[i];
    j["choices"].push_back(choice(static_cast<int32_t>(i), c.text, c.finish_reason, c.token_ids, c.logprobs));
  }
  j["usage"] = usage_json(usage);
  return dump(j);
}

std::string chat_response(const CompletionHeader& header, std::span<const CompletionChoice> choices,
                          const CompletionUsage& usage) {
  ojson j = head(header, false);
  j["choices"] = ojson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    ojson message;
    message["role"] = "assistant";
    message["content"] = choices[i].text;
    ojson c;
    c["index"] = static_cast<int32_t>(i);
    c["message"] = std::move(message);
    c["logprobs"] = choices[i].logprobs ? *choices[i].logprobs : ojson(nullptr);
    c["finish_reason"] = choices[i].finish_reason;
    j["choices"].push_back(std::move(c));
  }
  j["usage"] = usage_json(usage);
  return dump(j);
}

std::string stream_chunk(const CompletionHeader& header, int32_t index, std::string_view text_delta,
                         std::optional<std::string_view> finish_reason, const std::vector<int32_t>* token_ids,
                         bool with_usage_field, const OJson* logprobs) {
  ojson j = head(header, true);
  j["choices"] = ojson::array({choice(index, text_delta, finish_reason, token_ids, logprobs)});
  if (with_usage_field) j["usage"] = nullptr;
  return sse(j);
}

std::string chat_stream_chunk(const CompletionHeader& header, int32_t index, std::optional<std::string_view> role,
                              std::optional<std::string_view> content, std::optional<std::string_view> finish_reason,
                              bool with_usage_field, const OJson* logprobs) {
  ojson delta = ojson::object();
  if (role) delta["role"] = std::string(*role);
  if (content) delta["content"] = std::string(*content);
  ojson c;
  c["index"] = index;
  c["delta"] = std::move(delta);
  c["logprobs"] = logprobs ? *logprobs : ojson(nullptr);
  c["finish_reason"] = finish_reason ? ojson(std::string(*finish_reason)) : ojson(nullptr);
  ojson j = head(header, true);
  j["choices"] = ojson::array({std::move(c)});
  if (with_usage_field) j["usage"] = nullptr;
  return sse(j);
}

std::string stream_usage_chunk(const CompletionHeader& header, const CompletionUsage& usage) {
  ojson j = head(header, true);
  j["choices"] = ojson::array();
  j["usage"] = usage_json(usage);
  return sse(j);
}

std::string stream_error_event(std::string_view message, std::string_view type) {
  return "data: " + error_body(message, type) + "\n\n";
}

}  // namespace ds::serve
