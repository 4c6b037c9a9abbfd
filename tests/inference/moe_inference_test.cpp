// MoE serving (Note [MoE serving] in model_runner.cpp): the inference engine's greedy tokens over a ragged batch
// equal the training model's forward (full recomputation of each sequence) for top-1, top-2 and Residual-MoE, and
// its first logits agree within float rounding; capacity-based routing is not used when serving.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "common/full_recompute.h"
#include "ds/core/rng.h"
#include "ds/inference/engine.h"

namespace ds::inference {
namespace {

nn::Gpt2Config moe_config(int k, bool residual) {
  nn::Gpt2Config c;
  c.name = "moe-inference";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  c.vocab_size = 512;
  c.block_size = 96;
  c.moe.num_experts = {4};
  c.moe.layer_interval = 1;
  c.moe.options.gate.k = k;
  c.moe.options.gate.drop_tokens = false;  // the training model's eval forward then drops nothing either
  c.moe.options.use_residual = residual;
  return c;
}

}  // namespace

TEST(MoeInference, GreedyTokensEqualTheTrainingModelsForward) {
  for (const auto& [k, residual] : {std::pair{1, false}, std::pair{2, false}, std::pair{1, true}}) {
    nn::Gpt2 model(moe_config(k, residual), 1, /*with_grads=*/false);
    model.init_weights(7);
    // Weights larger than the init's give varied greedy tokens and a decisive, per-token routing.
    for (nn::ParameterStore* store : {&model.params(), &model.expert_params()})
      for (nn::Parameter& p : store->all())
        if (p.name.find(".ln_") == std::string::npos)
          for (int64_t i = 0; i < p.numel(); ++i) p.data.data<float>()[i] *= 10.0f;
    auto im = std::make_shared<InferenceModel>(model);
    EngineConfig ec;
    ec.kv_block_size = 8;
    ec.kv_block_count = 64;
    InferenceEngine engine(im, ec);
    Rng rng(5);
    const std::vector<std::vector<int32_t>> prompts = {testing::random_tokens(rng, 9, 512),
                                                       testing::random_tokens(rng, 4, 512),
                                                       testing::random_tokens(rng, 13, 512)};
    std::vector<uint64_t> uids = {1, 2, 3};
    std::vector<std::vector<int32_t>> got(prompts.size()), next = prompts;
    for (int step = 0; step <= 12; ++step) {
      std::vector<std::span<const int32_t>> spans;
      for (const auto& t : next) spans.emplace_back(t);
      const std::span<const float> logits = engine.put(uids, spans);
      for (size_t i = 0; i < prompts.size(); ++i) {
        if (step == 0) {
          const std::vector<float> want = testing::full_recompute_last_logits(model, prompts[i]);
          double diff = 0;
          for (size_t v = 0; v < want.size(); ++v)
            diff = std::max(diff, double(std::fabs(want[v] - logits[i * 512 + v])));
          EXPECT_LT(diff, 1e-4) << "k " << k << " residual " << residual << " prompt " << i;
        }
        const int32_t tok = testing::argmax(logits.subspan(i * 512, 512));
        got[i].push_back(tok);
        next[i] = {tok};
      }
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<int32_t> want = testing::full_recompute_greedy(model, prompts[i], 13);
      EXPECT_GT(std::set<int32_t>(want.begin(), want.end()).size(), 2u);
      EXPECT_EQ(got[i], want) << "k " << k << " residual " << residual << " prompt " << i;
    }
  }
}

}  // namespace ds::inference
