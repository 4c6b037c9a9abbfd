// Chat templates: Hugging Face's `chat_template`, the Jinja text a model's tokenizer_config.json carries to turn
// messages into its prompt, read and rendered by a Jinja interpreter of our own that covers what chat templates
// use: {{ }}, {% if/elif/else %}, {% for x in xs [if cond] %} with `loop`, {% set %} (namespace attributes
// included), whitespace control ({%- -%}) with transformers' trim_blocks and lstrip_blocks, the usual operators,
// tests (is defined, is none, ...), filters (trim, length, tojson, join, default, ...), string and dict methods
// (strip, startswith, split, items, get, ...), and the functions raise_exception, namespace and range. Anything
// else is refused when the template is read, with its line and column, rather than rendered wrongly.
// Rendering is bounded: loop iterations and output size have limits, so a template cannot hang the server.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "ds/serve/openai_protocol.h"

namespace ds::serve {

struct ChatTemplateInput {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
};

class ChatTemplate {
 public:
  // Reads a template. Throws ConfigError naming `origin`, the line and column, and what is not understood.
  static ChatTemplate parse(std::string_view source, std::string origin);

  // The prompt for `input`. A template's raise_exception(message), and a render past the limits, throw ApiError
  // (400) with the message, since it is the request that the template refuses.
  std::string render(const ChatTemplateInput& input) const;
  const std::string& origin() const { return origin_; }

  struct Node;

 private:
  std::shared_ptr<const Node> root_;
  std::shared_ptr<const std::string> source_;  // for the line and column of errors found while rendering
  std::string origin_;
};

// The chat format a server applies: a template and the tokens it is given, or the built-in ChatML.
struct ChatFormat {
  std::shared_ptr<const ChatTemplate> jinja;  // null: ChatML (chatml_prompt)
  std::string bos_token, eos_token;
  std::string origin = "ChatML (built in)";  // for the banner and messages
};

// A server's chat format: template_file (a Jinja file) when given; else the "chat_template" of
// tokenizer_dir/tokenizer_config.json (Hugging Face's: a string, or a list of {name, template} where "default" is
// taken) when it has one; else ChatML. bos_token and eos_token come from tokenizer_config.json when it exists.
// Throws IoError for a file that cannot be read, ConfigError for one that is not understood.
ChatFormat load_chat_format(const std::string& tokenizer_dir, const std::string& template_file);

}  // namespace ds::serve
