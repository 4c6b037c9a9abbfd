// The ragged, paged engine against a naive reference: the training model's full forward over the whole sequence
// (its own embedding, attention and head kernels), recomputed from scratch for every generated token. Greedy
// tokens must agree exactly and the logits closely, whatever the batch mix, the split points and the block size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "common/full_recompute.h"
#include "ds/inference/engine.h"

namespace ds::inference {
namespace {

nn::Gpt2Config small_config() {
  nn::Gpt2Config c;
  c.name = "engine-test";
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  c.vocab_size = 512;
  c.block_size = 160;
  return c;
}

struct Fixture {
  Fixture() : model(small_config(), 1, /*with_grads=*/false) {
    model.init_weights(7);
    runner = std::make_shared<InferenceModel>(model);
  }
  std::vector<float> naive_last_logits(const std::vector<int32_t>& tokens) {
    return testing::full_recompute_last_logits(model, tokens);
  }
  std::vector<int32_t> naive_greedy(const std::vector<int32_t>& tokens, int n) {
    return testing::full_recompute_greedy(model, tokens, n);
  }
  nn::Gpt2 model;
  std::shared_ptr<InferenceModel> runner;
};

using testing::argmax;
using testing::random_tokens;

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

// The prompt split in two at every step-th point (first part in one put, the rest in the next) ends with the
// whole prompt's logits.
void expect_splits_give(InferenceEngine& engine, const std::vector<int32_t>& prompt,
                        const std::vector<float>& whole_logits, int step) {
  for (int k = 1; k < static_cast<int>(prompt.size()); k += step) {
    const uint64_t uid = 10 + static_cast<uint64_t>(k);
    const std::span<const int32_t> head[] = {std::span<const int32_t>(prompt.data(), static_cast<size_t>(k))};
    const std::span<const int32_t> tail[] = {std::span<const int32_t>(prompt.data() + k, prompt.size() - k)};
    engine.put(std::span(&uid, 1), head);
    const std::span<const float> logits = engine.put(std::span(&uid, 1), tail);
    EXPECT_LT(max_abs_diff(logits, whole_logits), 1e-5) << "split at " << k;
    engine.flush(uid);
  }
}

EngineConfig engine_config(int32_t block_size, int32_t blocks) {
  EngineConfig c;
  c.kv_block_size = block_size;
  c.kv_block_count = blocks;
  c.max_ragged_batch_size = 1024;
  c.max_ragged_sequence_count = 64;
  return c;
}

class EngineBlockSize : public ::testing::TestWithParam<int> {};

// Mixed prompt lengths prefilled in one ragged pass, then decoded together: every sequence's greedy tokens equal
// its own full-recompute run.
TEST_P(EngineBlockSize, MixedBatchGreedyEqualsFullRecompute) {
  const int bs = GetParam();
  Fixture f;
  const int V = f.model.config().vocab_size;
  InferenceEngine engine(f.runner, engine_config(bs, (160 / bs + 1) * 8));
  Rng rng(11);
  const std::vector<int> lengths = {1, 5, 17, 33, 64, 70};
  const int kNew = 10;
  std::vector<std::vector<int32_t>> prompts, generated(lengths.size());
  std::vector<uint64_t> uids;
  for (size_t i = 0; i < lengths.size(); ++i) {
    prompts.push_back(random_tokens(rng, lengths[i], V));
    uids.push_back(100 + i);
  }
  std::vector<std::span<const int32_t>> toks(prompts.begin(), prompts.end());
  double worst = 0;
  std::span<const float> logits = engine.put(uids, toks);
  for (int step = 0; step < kNew; ++step) {
    std::vector<int32_t> next(uids.size());
    for (size_t i = 0; i < uids.size(); ++i) {
      std::vector<int32_t> ctx = prompts[i];
      ctx.insert(ctx.end(), generated[i].begin(), generated[i].end());
      const std::vector<float> ref = f.naive_last_logits(ctx);
      const auto row = logits.subspan(i * V, V);
      worst = std::max(worst, max_abs_diff(row, ref));
      next[i] = argmax(row);
      ASSERT_EQ(next[i], argmax(ref)) << "sequence " << i << " step " << step << " block size " << bs;
      generated[i].push_back(next[i]);
    }
    std::vector<std::span<const int32_t>> one;
    for (size_t i = 0; i < uids.size(); ++i) one.emplace_back(&generated[i].back(), 1);
    if (step + 1 < kNew) logits = engine.put(uids, one);
  }
  EXPECT_LT(worst, 1e-4) << "largest logit difference against the full forward";
  for (uint64_t u : uids) EXPECT_TRUE(engine.flush(u));
  EXPECT_EQ(engine.free_blocks(), engine.kv_state().kv_block_count());
}

// Every split point of a prompt: the first k tokens in one pass, the rest in the next (beside an unrelated
// decode), then greedy decoding; the result is the unsplit full-recompute run.
TEST_P(EngineBlockSize, EverySplitPointOfAPrompt) {
  const int bs = GetParam();
  Fixture f;
  const int V = f.model.config().vocab_size;
  Rng rng(5);
  const std::vector<int32_t> prompt = random_tokens(rng, 37, V);
  const std::vector<int32_t> other = random_tokens(rng, 9, V);
  const std::vector<int32_t> expected = f.naive_greedy(prompt, 4);
  const std::vector<float> expected_logits = f.naive_last_logits(prompt);
  InferenceEngine engine(f.runner, engine_config(bs, (160 / bs + 1) * 3));
  for (int k = 1; k < static_cast<int>(prompt.size()); ++k) {
    const uint64_t a = 1, b = 2;
    const std::span<const int32_t> head(prompt.data(), static_cast<size_t>(k));
    const std::span<const int32_t> tail(prompt.data() + k, prompt.size() - static_cast<size_t>(k));
    const uint64_t first_uids[] = {b, a};
    const std::span<const int32_t> first_toks[] = {other, head};
    engine.put(first_uids, first_toks);
    const int32_t decode_tok = 3;
    const uint64_t second_uids[] = {b, a};
    const std::span<const int32_t> second_toks[] = {std::span<const int32_t>(&decode_tok, 1), tail};
    std::span<const float> logits = engine.put(second_uids, second_toks);
    EXPECT_LT(max_abs_diff(logits.subspan(V, V), expected_logits), 1e-4) << "split at " << k;
    std::vector<int32_t> got;
    for (int s = 0; s < 4; ++s) {
      const int32_t t = argmax(logits.subspan(s == 0 ? V : 0, V));
      got.push_back(t);
      const uint64_t u[] = {a};
      const std::span<const int32_t> tk[] = {std::span<const int32_t>(&got.back(), 1)};
      if (s < 3) logits = engine.put(u, tk);
    }
    EXPECT_EQ(got, expected) << "split at " << k << " block size " << bs;
    engine.flush(a);
    engine.flush(b);
    ASSERT_EQ(engine.free_blocks(), engine.kv_state().kv_block_count());
  }
}

INSTANTIATE_TEST_SUITE_P(Engine, EngineBlockSize, ::testing::Values(1, 16, 64),
                         [](const auto& info) { return "block" + std::to_string(info.param); });

TEST(Engine, CanScheduleFollowsDeepSpeedOrderOfChecks) {
  Fixture f;
  EngineConfig c = engine_config(16, 4);  // 64 token slots
  c.max_ragged_batch_size = 40;
  c.max_ragged_sequence_count = 2;
  c.max_tracked_sequences = 3;
  InferenceEngine engine(f.runner, c);
  const uint64_t three[] = {1, 2, 3};
  const int32_t three_len[] = {1, 1, 1};
  EXPECT_EQ(engine.can_schedule(three, three_len), ScheduleStatus::batch_sequence_limit);
  const uint64_t two[] = {1, 2};
  const int32_t too_long[] = {50, 20};  // 4 + 2 blocks > 4 free
  EXPECT_EQ(engine.can_schedule(two, too_long), ScheduleStatus::kv_cache_limit);
  const int32_t over_budget[] = {30, 20};  // 2 + 2 blocks fit, 50 tokens > 40
  EXPECT_EQ(engine.can_schedule(two, over_budget), ScheduleStatus::batch_token_limit);
  const int32_t ok[] = {20, 20};
  EXPECT_EQ(engine.can_schedule(two, ok), ScheduleStatus::ok);
  std::vector<int32_t> t(20, 1);
  const std::span<const int32_t> toks[] = {t, t};
  engine.put(two, toks);
  EXPECT_EQ(engine.free_blocks(), 0);
  const uint64_t another[] = {3};
  const int32_t one[] = {1};
  EXPECT_EQ(engine.can_schedule(another, one), ScheduleStatus::kv_cache_limit);
  // 20 seen in 2 blocks of 16: 12 slots left, the 13th token needs a block.
  EXPECT_EQ(engine.remaining_block_capacity(1), 12);
  EXPECT_EQ(engine.query(1, 13, 0).tokens, 12);
  EXPECT_THROW(engine.put(another, std::span<const std::span<const int32_t>>(toks, 1)), Error);
  EXPECT_TRUE(engine.flush(1));
  EXPECT_FALSE(engine.flush(1));
  EXPECT_EQ(engine.free_blocks(), 2);
}

TEST(Engine, RejectsBadBatches) {
  Fixture f;
  InferenceEngine engine(f.runner, engine_config(16, 8));
  const std::vector<int32_t> bad = {1, 600};
  const uint64_t u[] = {1};
  const std::span<const int32_t> t[] = {bad};
  EXPECT_THROW(engine.put(u, t), Error);
  const std::vector<int32_t> good = {1, 2};
  const uint64_t twice[] = {1, 1};
  const std::span<const int32_t> tt[] = {good, good};
  EXPECT_THROW(engine.put(twice, tt), Error);
  EXPECT_EQ(engine.free_blocks(), 8) << "a refused batch reserves nothing";
}

TEST(Engine, KvCacheSizedFromMemoryBudget) {
  Fixture f;
  EngineConfig c;
  c.kv_block_size = 16;
  c.kv_memory_bytes = 1 << 20;
  InferenceEngine engine(f.runner, c);
  // 16 tokens x 2 layers x (K, V) x 64 channels x 4 bytes = 16 KiB a block.
  EXPECT_EQ(engine.kv_state().kv_block_count(), (1 << 20) / (16 * 2 * 2 * 64 * 4));
  EXPECT_EQ(engine.kv_cache_bytes(), int64_t(engine.kv_state().kv_block_count()) * 16 * 2 * 2 * 64 * 4);
}

}  // namespace
}  // namespace ds::inference

namespace ds::inference {
namespace {

// bf16 weights: every split point of a prompt gives the same last-token logits as the whole prompt in one pass
// (the bf16 GEMMs round each input on its own and sum each row in a fixed order, so a ragged batch changes
// nothing), and those logits stay within bf16's precision of the fp32 engine's without being equal to them.
TEST(EngineBf16, SplitPointsAgreeAndStayNearFp32) {
  Fixture f;
  const auto bf16 = std::make_shared<InferenceModel>(f.model, WeightFormat::bf16);
  EXPECT_EQ(bf16->weight_format(), WeightFormat::bf16);
  const int V = f.model.config().vocab_size;
  Rng rng(9);
  const std::vector<int32_t> prompt = random_tokens(rng, 37, V);
  InferenceEngine fp32_engine(f.runner, engine_config(16, 40));
  InferenceEngine engine(bf16, engine_config(16, 40));
  const uint64_t one = 1;
  const std::span<const int32_t> whole[] = {prompt};
  const std::span<const float> ref32 = fp32_engine.put(std::span(&one, 1), whole);
  const std::vector<float> fp32_logits(ref32.begin(), ref32.end());
  const std::span<const float> ref16 = engine.put(std::span(&one, 1), whole);
  const std::vector<float> whole_logits(ref16.begin(), ref16.end());
  engine.flush(one);
  double scale = 0;
  for (const float v : fp32_logits) scale = std::max(scale, double(std::abs(v)));
  const double gap = max_abs_diff(whole_logits, fp32_logits);
  EXPECT_LT(gap, 2e-2 * std::max(1.0, scale)) << "largest logit " << scale;
  EXPECT_GT(gap, 0.0) << "bf16 weights gave the fp32 logits exactly";
  expect_splits_give(engine, prompt, whole_logits, 5);
}

TEST(EngineBf16, WeightFormatNames) {
  EXPECT_EQ(parse_weight_format("fp32"), WeightFormat::fp32);
  EXPECT_EQ(parse_weight_format("bf16"), WeightFormat::bf16);
  EXPECT_THROW(parse_weight_format("fp16"), ConfigError);
  EXPECT_STREQ(weight_format_name(WeightFormat::bf16), "bf16");
}

}  // namespace
}  // namespace ds::inference

namespace ds::inference {
namespace {

// A bf16 KV cache: mixed prompts prefilled together and decoded together stay within bf16's precision of the
// full-recompute reference at every step (and are not equal to it: the cache really rounds), every split point
// of a prompt gives the whole prompt's logits (a token's K and V round the same whichever pass writes them), and
// a memory budget holds twice the fp32 cache's blocks.
EngineConfig bf16_kv_config(int32_t blocks) {
  EngineConfig c = engine_config(16, blocks);
  c.kv_dtype = DType::bf16;
  return c;
}

TEST(EngineKvBf16, MixedBatchStaysNearFullRecompute) {
  Fixture f;
  const int V = f.model.config().vocab_size;
  InferenceEngine engine(f.runner, bf16_kv_config(80));
  Rng rng(13);
  const std::vector<int> lengths = {1, 9, 33, 70};
  std::vector<std::vector<int32_t>> ctx;
  std::vector<uint64_t> uids;
  for (size_t i = 0; i < lengths.size(); ++i) {
    ctx.push_back(random_tokens(rng, lengths[i], V));
    uids.push_back(200 + i);
  }
  std::vector<std::span<const int32_t>> toks(ctx.begin(), ctx.end());
  std::span<const float> logits = engine.put(uids, toks);
  double worst = 0, scale = 0;
  for (int step = 0; step < 6; ++step) {
    std::vector<int32_t> next(uids.size());
    for (size_t i = 0; i < uids.size(); ++i) {
      const std::vector<float> ref = f.naive_last_logits(ctx[i]);
      for (const float v : ref) scale = std::max(scale, double(std::abs(v)));
      worst = std::max(worst, max_abs_diff(logits.subspan(i * V, V), ref));
      next[i] = argmax(ref);  // both sides continue with the reference's token
    }
    std::vector<std::span<const int32_t>> one;
    for (size_t i = 0; i < uids.size(); ++i) {
      ctx[i].push_back(next[i]);
      one.emplace_back(&ctx[i].back(), 1);
    }
    logits = engine.put(uids, one);
  }
  EXPECT_LT(worst, 1.5e-3 * std::max(1.0, scale)) << "largest logit " << scale;
  EXPECT_GT(worst, 0.0) << "a bf16 cache gave the fp32 logits exactly";
  for (const uint64_t u : uids) EXPECT_TRUE(engine.flush(u));
  EXPECT_EQ(engine.free_blocks(), engine.kv_state().kv_block_count());
}

TEST(EngineKvBf16, SplitPointsGiveTheWholePromptsLogits) {
  Fixture f;
  const int V = f.model.config().vocab_size;
  InferenceEngine engine(f.runner, bf16_kv_config(40));
  Rng rng(17);
  const std::vector<int32_t> prompt = random_tokens(rng, 37, V);
  const uint64_t one = 1;
  const std::span<const int32_t> whole[] = {prompt};
  const std::span<const float> first = engine.put(std::span(&one, 1), whole);
  const std::vector<float> whole_logits(first.begin(), first.end());
  engine.flush(one);
  expect_splits_give(engine, prompt, whole_logits, 3);
  EXPECT_EQ(engine.free_blocks(), engine.kv_state().kv_block_count());
}

TEST(EngineKvBf16, BudgetHoldsTwiceTheBlocks) {
  Fixture f;
  EngineConfig c;
  c.kv_block_size = 16;
  c.kv_memory_bytes = 1 << 20;
  c.kv_dtype = DType::bf16;
  InferenceEngine engine(f.runner, c);
  // 16 tokens x 2 layers x (K, V) x 64 channels x 2 bytes = 8 KiB a block.
  EXPECT_EQ(engine.kv_state().kv_block_count(), (1 << 20) / (16 * 2 * 2 * 64 * 2));
  EXPECT_EQ(engine.kv_cache_bytes(), int64_t(engine.kv_state().kv_block_count()) * 16 * 2 * 2 * 64 * 2);
}

TEST(EngineKvBf16, NamesAndDevices) {
  EXPECT_EQ(parse_kv_dtype("fp32"), DType::f32);
  EXPECT_EQ(parse_kv_dtype("bf16"), DType::bf16);
  EXPECT_THROW(parse_kv_dtype("fp16"), ConfigError);
  EXPECT_STREQ(kv_dtype_name(DType::bf16), "bf16");
  Fixture f;
  EngineConfig c;
  c.kv_dtype = DType::bf16;
  c.device = Device::cuda(0);
  try {
    InferenceEngine engine(f.runner, c);
    ADD_FAILURE() << "a bf16 cache on a GPU was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-dtype bf16 is a CPU option"), std::string::npos) << e.what();
  }
  c.device = Device::cpu();
  c.kv_dtype = DType::f16;
  EXPECT_THROW(InferenceEngine(f.runner, c), ConfigError) << "a KV cache holds fp32 or bf16";
}

}  // namespace
}  // namespace ds::inference

namespace ds::inference {
namespace {

// Forked sequences share the prompt's blocks and copy the shared last block on their first write: each one's
// logits stay those of the full recompute of its own tokens, the prompt's blocks are held once, and every block
// comes back when all are flushed. Covers a prompt that ends mid-block and one that fills its last block.
TEST(EngineFork, ChildrenShareThePromptAndCopyOnWrite) {
  Fixture f;
  for (const int prompt_len : {10, 12}) {
    SCOPED_TRACE(::testing::Message() << "prompt of " << prompt_len << " tokens, blocks of 4");
    InferenceEngine engine(f.runner, engine_config(4, 40));
    Rng rng(static_cast<uint64_t>(prompt_len));
    const std::vector<int32_t> prompt = random_tokens(rng, prompt_len, 512);
    const uint64_t parent = 1;
    const std::span<const int32_t> p[] = {prompt};
    engine.put(std::span(&parent, 1), p);
    const int32_t prompt_blocks = engine.kv_state().used_blocks();
    EXPECT_EQ(prompt_blocks, (prompt_len + 3) / 4);
    const std::vector<uint64_t> uids = {1, 2, 3};
    engine.fork(1, 2);
    engine.fork(1, 3);
    EXPECT_EQ(engine.kv_state().used_blocks(), prompt_blocks) << "a fork copies nothing";

    // Five decode steps, each sequence fed its own random token.
    std::vector<std::vector<int32_t>> seqs(3, prompt);
    for (int step = 0; step < 5; ++step) {
      std::vector<int32_t> next(3);
      std::vector<std::span<const int32_t>> toks;
      for (size_t i = 0; i < 3; ++i) {
        next[i] = static_cast<int32_t>(rng.next_u64() % 512);
        seqs[i].push_back(next[i]);
      }
      for (size_t i = 0; i < 3; ++i) toks.emplace_back(&next[i], 1);
      const std::span<const float> logits = engine.put(uids, toks);
      for (size_t i = 0; i < 3; ++i) {
        const std::vector<float> ref = f.naive_last_logits(seqs[i]);
        EXPECT_LT(max_abs_diff(logits.subspan(i * 512, 512), ref), 1e-5) << "sequence " << i << " step " << step;
      }
      if (step == 0) {
        // Mid-block: two of the three writers copied the shared last block; a full last block needs no copy,
        // and each sequence took a new block of its own.
        const int32_t expected = prompt_len % 4 != 0 ? prompt_blocks + 2 : prompt_blocks + 3;
        EXPECT_EQ(engine.kv_state().used_blocks(), expected);
      }
    }
    for (const uint64_t u : uids) {
      engine.flush(u);
      if (u == 1) {
        EXPECT_GT(engine.kv_state().used_blocks(), 0) << "the children still hold the prompt";
      }
    }
    EXPECT_EQ(engine.kv_state().used_blocks(), 0);
    EXPECT_EQ(engine.free_blocks(), 40);
  }
}

TEST(EngineFork, QueryCountsTheCopyOfASharedBlock) {
  KvStateManager kv(8, 4, 8, 64);
  kv.reserve(1, 6);
  kv.advance(1, 6);  // blocks: one full, one with 2 of 4 slots
  kv.fork(1, 2);
  EXPECT_EQ(kv.remaining_block_capacity(1), 0) << "a shared last block takes no more tokens in place";
  EXPECT_EQ(kv.query(1, 1, 8).blocks, 1);  // the copy
  EXPECT_EQ(kv.query(1, 3, 8).blocks, 2);  // the copy and one more
  EXPECT_EQ(kv.query(1, 2, 0).tokens, 0);  // no free block: not even the copy
  kv.reserve(1, 1);
  EXPECT_EQ(kv.take_copies().size(), 1u);
  EXPECT_EQ(kv.remaining_block_capacity(2), 2) << "the child now holds the old block alone";
  EXPECT_THROW(kv.fork(7, 8), Error);
  EXPECT_THROW(kv.fork(1, 2), Error);
}

}  // namespace
}  // namespace ds::inference
