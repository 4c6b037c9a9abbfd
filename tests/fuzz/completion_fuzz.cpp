// POST /v1/completions bodies, as the server parses them before anything else sees the request.
#include "ds/serve/openai_protocol.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ds::fuzz::run_input([&] { ds::serve::parse_completion_request(ds::fuzz::as_text(data, size), "tiny"); });
}
