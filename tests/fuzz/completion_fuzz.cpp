// POST /v1/completions and /v1/chat/completions bodies, as the server parses them before anything else sees the
// request: the same bytes through both parsers.
#include "ds/serve/openai_protocol.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body = ds::fuzz::as_text(data, size);
  ds::fuzz::run_input([&] { ds::serve::parse_completion_request(body, "tiny"); });
  return ds::fuzz::run_input([&] { ds::serve::parse_chat_request(body, "tiny"); });
}
