// Chat templates (a tokenizer_config.json's chat_template, or --chat-template): read, then rendered over a small
// conversation. A template is refused when read (ConfigError) or when rendered (ApiError, ConfigError); it may
// never crash, hang, or grow without bound.
#include "ds/serve/chat_template.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ds::fuzz::run_input([&] {
    const ds::serve::ChatTemplate t = ds::serve::ChatTemplate::parse(ds::fuzz::as_text(data, size), "fuzz");
    ds::serve::ChatTemplateInput in;
    in.messages = {{"system", "Be brief."}, {"user", "Hello"}, {"assistant", "Hi!"}, {"user", "Bye"}};
    in.bos_token = "<s>";
    in.eos_token = "</s>";
    t.render(in);
  });
}
