// Real DeepSpeed configs from public projects (tests/fixtures/ds_configs/, sources in SOURCES.md), each read as
// `dspeed train` reads it (its "auto" values filled from the flags' defaults) and then trained for one step on a
// small model. Each refusal must be listed below with its reason: one DeepSpeed makes as well, or a feature whose
// absence would change what is trained. At least 90% of the files must train.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "ds/comm/local/local_comm.h"
#include "ds/config/config.h"
#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/core/rng.h"
#include "ds/engine/engine.h"

namespace ds {
namespace {

namespace fs = std::filesystem;

struct Refusal {
  const char* message;  // a fragment of the ConfigError
  const char* reason;   // why refusing is right
};

// File -> the refusal expected.
const std::map<std::string, Refusal> kExpectedRefusals = {
    {"deepspeedexamples__megatron_zero_stage_infinity_config.json",
     {"did you mean 'stage3_param_persistence_threshold'?",
      "misspells stage3_param_persistence_threshold; DeepSpeed's pydantic model refuses the unknown key too"}},
    {"gpt_neox__1bit_deepspeed.json",
     {"did you mean 'cuda_aware'?",
      "\"cuda-aware\" is no argument of OneBitAdam: DeepSpeed fails with a TypeError when it builds the optimizer"}},
    {"gpt_neox__6_7b_tune.json",
     {"'zero_optimization.stage'", "a list of stages is an autotuning search space, not a stage"}},
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> fixtures() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(DS_SOURCE_DIR) / "tests/fixtures/ds_configs"))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// A small GPT-2 with a small vocabulary: a step of even a 64K-sample batch stays cheap.
nn::Gpt2Config small_model() {
  nn::Gpt2Config c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 32;
  c.vocab_size = 128;
  c.block_size = 16;
  return c;
}

TEST(RealConfigs, EachRunsOrIsRefusedForAListedReason) {
  set_log_level(LogLevel::error);
  const std::vector<fs::path> files = fixtures();
  ASSERT_GE(files.size(), 25u) << "the fixture set needs at least 25 real configs";
  int ran = 0;
  for (const fs::path& path : files) {
    const std::string name = path.filename().string();
    SCOPED_TRACE(name);
    config::AutoValues autos;
    autos.hidden_size = small_model().n_embd;
    const auto expected = kExpectedRefusals.find(name);
    try {
      // A tensor-parallel config runs on as many ranks (threads) as it splits the model across.
      const std::string text = read_file(path);
      const nlohmann::json j = nlohmann::json::parse(text, nullptr, false, true);
      const int world = j.is_object() && j.contains("tensor_parallel") && j["tensor_parallel"].is_object()
                            ? j["tensor_parallel"].value("autotp_size", 1)
                            : 1;
      const config::DeepSpeedConfig c = config::parse_config(text, world, name, &autos);
      if (expected != kExpectedRefusals.end()) {
        ADD_FAILURE() << "expected a refusal: " << expected->second.reason;
        continue;
      }
      constexpr int T = 8;
      std::vector<engine::StepResult> results(static_cast<size_t>(world));
      comm::run_local_world(world, [&](comm::Communicator& comm) {
        engine::Engine engine(small_model(), c, T, &comm, 7);
        Rng rng(3);
        results[comm.rank()] = engine.train_batch([&](int32_t* in, int32_t* tg) {
          for (int64_t i = 0; i < c.train_micro_batch_size_per_gpu * T; ++i) {
            in[i] = static_cast<int32_t>(rng.next_u64() % 128);
            tg[i] = static_cast<int32_t>(rng.next_u64() % 128);
          }
        });
        EXPECT_EQ(engine.global_steps(), 1);
      });
      for (const engine::StepResult& r : results) EXPECT_TRUE(std::isfinite(r.loss));
      ++ran;
    } catch (const ConfigError& e) {
      if (expected == kExpectedRefusals.end()) {
        ADD_FAILURE() << "refused: " << e.what();
        continue;
      }
      EXPECT_NE(std::string(e.what()).find(expected->second.message), std::string::npos)
          << "expected '" << expected->second.message << "' in: " << e.what();
    }
  }
  set_log_level(LogLevel::info);
  EXPECT_GE(ran * 10, static_cast<int>(files.size()) * 9) << ran << " of " << files.size() << " ran";
  std::printf("%d of %zu real configs train a step; %zu refused, each for a listed reason\n", ran, files.size(),
              files.size() - ran);
}

}  // namespace
}  // namespace ds
