// "Did you mean" in the model's user-facing errors: an unknown parameter name lists the closest parameters, and an
// unknown key in a model JSON file suggests the nearest known key (or none when nothing is close) and lists all.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "common/scratch_dir.h"
#include "ds/core/error.h"
#include "ds/nn/models/gpt2.h"
#include "ds/nn/parameter.h"

namespace ds {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(NameErrors, UnknownParameterListsTheClosestNames) {
  nn::ParameterStore store;
  for (const char* name : {"transformer.wte.weight", "transformer.h.0.ln_1.bias", "transformer.h.0.ln_1.weight",
                           "transformer.h.0.ln_2.weight", "transformer.ln_f.weight"}) {
    store.add(name, {4});
  }
  const std::string msg = error_of([&] { store.get("transformer.h.0.ln_1.wieght"); });
  EXPECT_EQ(msg.rfind("[model] no parameter named 'transformer.h.0.ln_1.wieght' among the model's 5 parameters", 0),
            0u) << msg;
  // Distances 2, 3, 5: the nearest three in order.
  EXPECT_NE(msg.find("closest: 'transformer.h.0.ln_1.weight', 'transformer.h.0.ln_2.weight', "
                     "'transformer.h.0.ln_1.bias'"),
            std::string::npos)
      << msg;
}

class ModelFileTest : public test::ScratchDirTest {
 protected:
  std::string model_file(const std::string& text) const {
    const std::string p = path("model.json");
    write_bytes(p, text);
    return p;
  }
};

TEST_F(ModelFileTest, UnknownKeySuggestsTheNearestKnownKey) {
  const std::string p = model_file(R"({"preset": "gpt2-tiny", "n_layers": 2})");
  const std::string msg = error_of([&] { nn::Gpt2Config::from_spec(p); });
  EXPECT_EQ(msg, "[model] unknown key 'n_layers' in '" + p + "'; the known keys are preset, n_layer, n_head, n_embd, "
                 "vocab_size, block_size, model_type, moe. Did you mean 'n_layer'?");
}

TEST_F(ModelFileTest, UnknownKeyFarFromAllKnownKeysGetsNoSuggestion) {
  const std::string p = model_file(R"({"learning_rate": 0.1})");
  const std::string msg = error_of([&] { nn::Gpt2Config::from_spec(p); });
  EXPECT_NE(msg.find("unknown key 'learning_rate'"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("Did you mean"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Remove the key or fix its spelling."), std::string::npos) << msg;
}

TEST_F(ModelFileTest, ModelTypeIsAKnownKey) {
  const std::string p = model_file(R"({"preset": "gpt2-tiny", "model_type": "gpt2", "n_layer": 2})");
  EXPECT_EQ(nn::Gpt2Config::from_spec(p).n_layer, 2);
}

}  // namespace
}  // namespace ds
