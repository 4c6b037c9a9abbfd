// The serving loop end to end without HTTP: every policy, with a KV cache small enough to force splits and
// preemptions, must give each request exactly the greedy tokens of a naive full-recompute run of its prompt
// alone, free every block at the end, and account for every request. Also the loop's refusals and cancellation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <vector>

#include "ds/core/rng.h"
#include "common/full_recompute.h"
#include "ds/inference/serving_loop.h"

namespace ds::inference {
namespace {

nn::Gpt2Config small_config() {
  nn::Gpt2Config c;
  c.name = "loop-test";
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.vocab_size = 256;
  c.block_size = 96;
  return c;
}


struct Collected {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::none;
  int events_after_finish = 0;
};

class LoopPolicy : public ::testing::TestWithParam<Policy> {};

TEST_P(LoopPolicy, GreedyEqualsFullRecomputeUnderKvPressure) {
  nn::Gpt2 model(small_config(), 1, /*with_grads=*/false);
  model.init_weights(3);
  auto runner = std::make_shared<InferenceModel>(model);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 13;  // 52 slots for 10 requests of up to 50 tokens each
  InferenceEngine engine(runner, ec);
  SchedulerLimits limits;
  limits.token_budget = 32;
  limits.static_batch_size = 4;
  ServingLoop loop(engine, make_scheduler(GetParam(), limits), nullptr);

  Rng rng(17);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> max_new;
  std::map<uint64_t, size_t> index;
  std::vector<Collected> got(10);
  for (size_t i = 0; i < got.size(); ++i) {
    std::vector<int32_t> p(1 + rng.next_u64() % 20);
    for (auto& t : p) t = static_cast<int32_t>(rng.next_u64() % 256);
    prompts.push_back(p);
    max_new.push_back(static_cast<int>(1 + rng.next_u64() % 30));
    GenerationRequest r;
    r.prompt = p;
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_new.back();
    Collected* c = &got[i];
    r.sink = [c](const GenerationEvent& ev) {
      if (c->finish != FinishReason::none) ++c->events_after_finish;
      c->tokens.insert(c->tokens.end(), ev.tokens.begin(), ev.tokens.end());
      c->finish = ev.finish;
    };
    const SubmitResult s = loop.submit(std::move(r));
    ASSERT_EQ(s.status, SubmitStatus::accepted) << s.error;
    index[s.uid] = i;
    if (i % 3 == 2) loop.step();  // arrivals while others run
  }
  loop.run_until_idle();
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].finish, FinishReason::length) << "request " << i;
    EXPECT_EQ(got[i].events_after_finish, 0);
    EXPECT_EQ(got[i].tokens, testing::full_recompute_greedy(model, prompts[i], max_new[i])) << "request " << i << " under "
                                                                          << policy_name(GetParam());
  }
  const LoopStats st = loop.stats();
  EXPECT_EQ(st.requests_finished, 10);
  EXPECT_EQ(st.waiting + st.running, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
  EXPECT_EQ(engine.free_blocks(), ec.kv_block_count);
  EXPECT_EQ(engine.kv_state().tracked_sequences(), 0);
  int64_t generated = 0;
  for (int m : max_new) generated += m;
  EXPECT_EQ(st.completion_tokens, generated);
  EXPECT_EQ(st.time_to_first_token_s.count(), 10);
  EXPECT_EQ(st.time_per_output_token_s.count(), generated - 10);
  if (GetParam() == Policy::splitfuse) { EXPECT_GT(st.preemptions, 0) << "the cache was meant to be too small"; }
}

INSTANTIATE_TEST_SUITE_P(Loop, LoopPolicy,
                         ::testing::Values(Policy::splitfuse, Policy::prefill_first, Policy::static_batch),
                         [](const auto& info) { return std::string(policy_name(info.param)) == "prefill-first"
                                                           ? std::string("prefill_first")
                                                           : std::string(policy_name(info.param)); });

TEST(Loop, RefusesWhatCanNeverRunAndWhatDoesNotFit) {
  nn::Gpt2 model(small_config(), 1, false);
  model.init_weights(3);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 8;  // 32 slots
  InferenceEngine engine(std::make_shared<InferenceModel>(model), ec);
  LoopOptions lo;
  lo.max_pending = 2;
  ServingLoop loop(engine, make_scheduler(Policy::splitfuse, {}), nullptr, lo);
  auto request = [](std::vector<int32_t> p, int max_tokens) {
    GenerationRequest r;
    r.prompt = std::move(p);
    r.sampling.max_tokens = max_tokens;
    return r;
  };
  EXPECT_EQ(loop.submit(request({}, 4)).status, SubmitStatus::invalid);
  EXPECT_EQ(loop.submit(request({1, 256}, 4)).status, SubmitStatus::invalid);               // outside the vocabulary
  EXPECT_EQ(loop.submit(request(std::vector<int32_t>(90, 1), 10)).status, SubmitStatus::invalid);  // > context 96
  EXPECT_EQ(loop.submit(request(std::vector<int32_t>(30, 1), 10)).status, SubmitStatus::invalid);  // > 32 KV slots
  GenerationRequest stop = request({1, 2}, 4);
  stop.sampling.stop = {"x"};
  EXPECT_EQ(loop.submit(std::move(stop)).status, SubmitStatus::invalid);  // stop strings need a tokenizer
  EXPECT_EQ(loop.submit(request({1, 2}, 4)).status, SubmitStatus::accepted);
  EXPECT_EQ(loop.submit(request({1, 2}, 4)).status, SubmitStatus::accepted);
  const SubmitResult full = loop.submit(request({1, 2}, 4));
  EXPECT_EQ(full.status, SubmitStatus::queue_full);
  EXPECT_NE(full.error.find("retry"), std::string::npos);
  loop.run_until_idle();
  EXPECT_EQ(loop.submit(request({1, 2}, 4)).status, SubmitStatus::accepted) << "room again once they finished";
  loop.run_until_idle();
  EXPECT_EQ(loop.stats().requests_rejected, 6);
}

TEST(Loop, CancelFreesTheBlocksBeforeTheNextPass) {
  nn::Gpt2 model(small_config(), 1, false);
  model.init_weights(3);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 16;
  InferenceEngine engine(std::make_shared<InferenceModel>(model), ec);
  ServingLoop loop(engine, make_scheduler(Policy::splitfuse, {}), nullptr);
  FinishReason finish = FinishReason::none;
  int tokens = 0;
  GenerationRequest r;
  r.prompt = std::vector<int32_t>(10, 5);
  r.sampling.max_tokens = 40;
  r.sink = [&](const GenerationEvent& ev) {
    tokens += static_cast<int>(ev.tokens.size());
    finish = ev.finish;
  };
  const uint64_t uid = loop.submit(std::move(r)).uid;
  loop.step();
  loop.step();
  EXPECT_GT(engine.kv_state().used_blocks(), 0);
  loop.cancel(uid);
  EXPECT_FALSE(loop.step()) << "nothing is left to run";
  EXPECT_EQ(finish, FinishReason::cancelled);
  EXPECT_EQ(tokens, 2);
  EXPECT_EQ(engine.kv_state().used_blocks(), 0);
  EXPECT_EQ(loop.stats().kv_blocks_used, 0);
  EXPECT_EQ(loop.stats().requests_cancelled, 1);
}

TEST(Loop, SeededSamplingRepeatsWhateverRunsBesideIt) {
  nn::Gpt2 model(small_config(), 1, false);
  model.init_weights(3);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 64;
  InferenceEngine engine(std::make_shared<InferenceModel>(model), ec);
  ServingLoop loop(engine, make_scheduler(Policy::splitfuse, {}), nullptr);
  // Request k samples with its own seed (temperature for the first, top_k or top_p for the others); its tokens
  // must not depend on which others run beside it, though the passes then sample several sequences at once.
  auto request = [](int k, std::vector<int32_t>& out) {
    GenerationRequest r;
    r.prompt = std::vector<int32_t>(static_cast<size_t>(3 + 2 * k), 7 + k);
    r.sampling.max_tokens = 12 - k;
    r.sampling.temperature = 1.0f;
    if (k % 3 == 1) r.sampling.top_k = 5;
    if (k % 3 == 2) r.sampling.top_p = 0.9f;
    r.sampling.seed = 99 + static_cast<uint64_t>(k);
    r.sink = [&out](const GenerationEvent& ev) { out.insert(out.end(), ev.tokens.begin(), ev.tokens.end()); };
    return r;
  };
  constexpr int kRequests = 5;
  std::vector<std::vector<int32_t>> alone(kRequests), together(kRequests);
  for (int k = 0; k < kRequests; ++k) {
    loop.submit(request(k, alone[static_cast<size_t>(k)]));
    loop.run_until_idle();
    EXPECT_EQ(alone[static_cast<size_t>(k)].size(), static_cast<size_t>(12 - k)) << "request " << k;
  }
  for (int k = 0; k < kRequests; ++k) loop.submit(request(k, together[static_cast<size_t>(k)]));
  loop.run_until_idle();
  for (int k = 0; k < kRequests; ++k) EXPECT_EQ(together[static_cast<size_t>(k)], alone[static_cast<size_t>(k)]) << k;
}

}  // namespace
}  // namespace ds::inference

namespace ds::inference {
namespace {

// A request for n sequences gives sequence i exactly the tokens of a lone request seeded seed + i: the siblings
// share the prompt's KV blocks (the cache holds the prompt once; copy-on-write does the rest), and each samples
// with its own stream. Every sequence reports its index, the last one request_done, and the blocks all come back.
TEST(Loop, SequencesOfOneRequestEqualLoneRequestsWithTheirSeeds) {
  nn::Gpt2 model(small_config(), 1, false);
  model.init_weights(4);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 64;
  InferenceEngine engine(std::make_shared<InferenceModel>(model), ec);
  ServingLoop loop(engine, make_scheduler(Policy::splitfuse, {}), nullptr);
  const std::vector<int32_t> prompt = {5, 9, 200, 31, 77, 8, 140, 3, 61, 12, 99};  // ends mid-block
  auto request = [&](uint64_t seed, int n, std::vector<std::vector<int32_t>>& out, std::vector<int>& done) {
    GenerationRequest r;
    r.prompt = prompt;
    r.sampling.max_tokens = 10;
    r.sampling.temperature = 1.0f;
    r.sampling.seed = seed;
    r.sampling.n = n;
    out.assign(static_cast<size_t>(n), {});
    r.sink = [&out, &done](const GenerationEvent& ev) {
      out[static_cast<size_t>(ev.index)].insert(out[static_cast<size_t>(ev.index)].end(), ev.tokens.begin(),
                                                ev.tokens.end());
      if (ev.finish != FinishReason::none) done.push_back(ev.request_done ? 1 : 0);
    };
    return r;
  };
  std::vector<std::vector<int32_t>> together;
  std::vector<int> done;
  ASSERT_EQ(loop.submit(request(500, 3, together, done)).status, SubmitStatus::accepted);
  loop.step();  // the prompt, then the fork: the cache holds the prompt's blocks once
  EXPECT_EQ(engine.kv_state().tracked_sequences(), 3);
  EXPECT_EQ(engine.kv_state().used_blocks(), 3) << "11 prompt tokens in blocks of 4, shared by three sequences";
  loop.run_until_idle();
  EXPECT_EQ(done, (std::vector<int>{0, 0, 1})) << "request_done on the last sequence's finish only";
  EXPECT_EQ(engine.kv_state().used_blocks(), 0);
  EXPECT_EQ(loop.stats().requests_finished, 1);
  for (int i = 0; i < 3; ++i) {
    std::vector<std::vector<int32_t>> alone;
    std::vector<int> alone_done;
    ASSERT_EQ(loop.submit(request(500 + static_cast<uint64_t>(i), 1, alone, alone_done)).status,
              SubmitStatus::accepted);
    loop.run_until_idle();
    EXPECT_EQ(together[static_cast<size_t>(i)], alone[0]) << "sequence " << i;
  }
  EXPECT_NE(together[0], together[1]) << "the sequences must not all be the same draw";
}

// log_softmax of a row, in double.
std::vector<double> log_softmax(const std::vector<float>& row) {
  const double m = *std::max_element(row.begin(), row.end());
  double z = 0.0;
  for (const float l : row) z += std::exp(double(l) - m);
  std::vector<double> out(row.size());
  for (size_t i = 0; i < row.size(); ++i) out[i] = double(row[i]) - m - std::log(z);
  return out;
}

// The prompt's log-probabilities (echo with logprobs) and the generated tokens' equal the full recompute's
// log_softmax at each position, whether the prompt runs in one pass or is split across passes, and also when
// the request only scores its prompt (max_tokens 0).
TEST(Loop, PromptAndTokenLogprobsEqualFullRecompute) {
  nn::Gpt2 model(small_config(), 1, /*with_grads=*/false);
  model.init_weights(9);
  auto runner = std::make_shared<InferenceModel>(model);
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 64;
  InferenceEngine engine(runner, ec);
  SchedulerLimits limits;
  limits.token_budget = 8;  // a 19-token prompt takes three passes
  ServingLoop loop(engine, make_scheduler(Policy::splitfuse, limits), nullptr);

  Rng rng(23);
  const std::vector<int32_t> prompt = testing::random_tokens(rng, 19, 256);
  for (const int max_tokens : {0, 5}) {
    SCOPED_TRACE(::testing::Message() << "max_tokens " << max_tokens);
    GenerationRequest r;
    r.prompt = prompt;
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_tokens;
    r.sampling.logprobs = 3;
    r.sampling.prompt_logprobs = true;
    std::vector<TokenLogprob> prompt_lp, lp;
    std::vector<int32_t> tokens;
    FinishReason finish = FinishReason::none;
    int prompt_lists = 0;
    r.sink = [&](const GenerationEvent& ev) {
      if (!ev.prompt_logprobs.empty()) ++prompt_lists;
      prompt_lp.insert(prompt_lp.end(), ev.prompt_logprobs.begin(), ev.prompt_logprobs.end());
      lp.insert(lp.end(), ev.logprobs.begin(), ev.logprobs.end());
      tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
      finish = ev.finish;
    };
    ASSERT_EQ(loop.submit(std::move(r)).status, SubmitStatus::accepted);
    loop.run_until_idle();
    EXPECT_EQ(finish, FinishReason::length);
    EXPECT_EQ(prompt_lists, 1) << "the prompt's listing comes once";
    ASSERT_EQ(tokens.size(), static_cast<size_t>(max_tokens));
    ASSERT_EQ(lp.size(), tokens.size());
    ASSERT_EQ(prompt_lp.size(), prompt.size() - 1);

    // Reference: the model's logits at every position of prompt + generated, in one full forward.
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const int T = static_cast<int>(all.size()), V = model.config().vocab_size;
    std::vector<float> logits(static_cast<size_t>(T) * V);
    nn::Ctx ctx;
    model.forward_logits(ctx, all.data(), 1, T, logits.data());
    auto expect_entry = [&](const TokenLogprob& e, int position, int32_t token) {
      const std::vector<float> row(logits.begin() + int64_t(position) * V, logits.begin() + int64_t(position + 1) * V);
      const std::vector<double> ref = log_softmax(row);
      EXPECT_EQ(e.token, token);
      EXPECT_NEAR(e.logprob, ref[static_cast<size_t>(token)], 2e-4) << "position " << position;
      ASSERT_EQ(e.top.size(), 3u);
      EXPECT_EQ(e.top[0].first, testing::argmax(row));
      EXPECT_NEAR(e.top[0].second, *std::max_element(ref.begin(), ref.end()), 2e-4);
    };
    for (size_t k = 0; k < prompt_lp.size(); ++k) expect_entry(prompt_lp[k], static_cast<int>(k), prompt[k + 1]);
    for (size_t k = 0; k < lp.size(); ++k) {
      expect_entry(lp[k], static_cast<int>(prompt.size() + k) - 1, tokens[k]);
      EXPECT_EQ(tokens[k], lp[k].top[0].first) << "greedy takes the most likely token";
    }
  }
  EXPECT_EQ(engine.kv_state().used_blocks(), 0);
}

}  // namespace
}  // namespace ds::inference
