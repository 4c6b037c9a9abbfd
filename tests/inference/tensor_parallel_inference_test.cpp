// Tensor-parallel inference (DeepSpeed-Inference's AutoTP): the engine over 2 and 4 ranks (threads) holding shares of
// each layer gives the same greedy tokens as one rank, for a ragged batch of prompts decoded together, with logits
// within float rounding; each rank's KV cache holds only its heads.
#include <gtest/gtest.h>

#include <cmath>

#include "common/full_recompute.h"
#include "ds/comm/local/local_comm.h"
#include "ds/core/rng.h"
#include "ds/engine/comm_tensor_parallel.h"
#include "ds/inference/engine.h"

namespace ds::inference {
namespace {

nn::Gpt2Config config() {
  nn::Gpt2Config c;
  c.name = "tp-inference";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  c.vocab_size = 512;
  c.block_size = 96;
  return c;
}

struct Decoded {
  std::vector<std::vector<int32_t>> tokens;  // per prompt
  std::vector<float> first_logits;           // of the prefill pass
  int64_t kv_bytes = 0;
};

// Prefills three prompts in one ragged pass, then decodes `steps` greedy tokens for all of them together.
Decoded decode(const std::shared_ptr<const InferenceModel>& model, int steps) {
  EngineConfig ec;
  ec.kv_block_size = 8;
  ec.kv_block_count = 64;
  InferenceEngine engine(model, ec);
  Rng rng(5);
  const std::vector<std::vector<int32_t>> prompts = {testing::random_tokens(rng, 11, 512),
                                                     testing::random_tokens(rng, 5, 512),
                                                     testing::random_tokens(rng, 17, 512)};
  std::vector<uint64_t> uids = {1, 2, 3};
  Decoded out;
  out.tokens.resize(prompts.size());
  std::vector<std::vector<int32_t>> next = prompts;
  for (int step = 0; step <= steps; ++step) {
    std::vector<std::span<const int32_t>> spans;
    for (const auto& t : next) spans.emplace_back(t);
    const std::span<const float> logits = engine.put(uids, spans);
    if (step == 0) out.first_logits.assign(logits.begin(), logits.end());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int32_t tok = testing::argmax(logits.subspan(i * 512, 512));
      out.tokens[i].push_back(tok);
      next[i] = {tok};
    }
  }
  out.kv_bytes = engine.kv_cache_bytes();
  return out;
}

}  // namespace

TEST(TensorParallelInference, GreedyTokensEqualOneRanks) {
  nn::Gpt2 model(config(), 1, /*with_grads=*/false);
  model.init_weights(11);
  const Decoded one = decode(std::make_shared<InferenceModel>(model), 24);
  for (int world : {2, 4}) {
    std::vector<Decoded> got(static_cast<size_t>(world));
    comm::run_local_world(world, [&](comm::Communicator& comm) {
      engine::CommTensorParallel group(comm);
      got[static_cast<size_t>(comm.rank())] =
          decode(std::make_shared<InferenceModel>(model, WeightFormat::fp32, &group), 24);
    });
    for (int r = 0; r < world; ++r) {
      const Decoded& d = got[static_cast<size_t>(r)];
      EXPECT_EQ(d.tokens, one.tokens) << "world " << world << " rank " << r;
      ASSERT_EQ(d.first_logits.size(), one.first_logits.size());
      double diff = 0;
      for (size_t i = 0; i < d.first_logits.size(); ++i)
        diff = std::max(diff, std::fabs(double(d.first_logits[i]) - one.first_logits[i]));
      EXPECT_LT(diff, 1e-4) << "world " << world;
      EXPECT_EQ(d.kv_bytes * world, one.kv_bytes) << "each rank caches its heads only";
    }
  }
}

TEST(TensorParallelInference, HeadsThatDoNotSplitAreAClearError) {
  nn::Gpt2 model(config(), 1, false);
  model.init_weights(11);
  comm::run_local_world(3, [&](comm::Communicator& comm) {
    engine::CommTensorParallel group(comm);
    EXPECT_THROW(InferenceModel(model, WeightFormat::fp32, &group), ConfigError);
  });
}

}  // namespace ds::inference
