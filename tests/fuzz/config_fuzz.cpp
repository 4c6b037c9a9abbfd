// ds_config.json text (hjson comments and commas included), at world size 1 and 8 (the batch-size arithmetic).
#include "ds/config/config.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(ds::fuzz::as_text(data, size));
  ds::fuzz::run_input([&] { ds::config::parse_config(text, 1); });
  return ds::fuzz::run_input([&] { ds::config::parse_config(text, 8); });
}
