// The module runner: a sub-range of blocks run on its own composes to the whole model's forward/backward (same
// loss, gradients and hook sequence, bit for bit), a sub-range's input gradient matches a finite difference of the
// loss, and activation checkpointing changes neither gradients nor hooks while it keeps fewer activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/random_values.h"
#include "ds/core/rng.h"
#include "ds/nn/models/gpt2.h"

using namespace ds;

namespace {

nn::Gpt2Config small_config() {
  nn::Gpt2Config c;
  c.n_layer = 3, c.n_head = 2, c.n_embd = 32, c.vocab_size = 96, c.block_size = 16;
  return c;
}

struct Batch {
  int B = 2, T = 12;
  std::vector<int32_t> in, tg;
  explicit Batch(int vocab) : in(size_t(B) * T), tg(size_t(B) * T) {
    Rng rng(5);
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = static_cast<int32_t>(rng.next_u64() % vocab);
      tg[i] = static_cast<int32_t>(rng.next_u64() % vocab);
    }
    tg[3] = -1;  // an ignored target
  }
  int64_t count() const {
    int64_t n = 0;
    for (int32_t t : tg) n += t >= 0;
    return n;
  }
};

// Records every hook call as "<kind> <unit owner's name>".
class RecordingHooks : public nn::ModuleHooks {
 public:
  std::vector<std::string> calls;
  void pre_forward(const nn::Module& m) override { calls.push_back("pre_forward " + m.name()); }
  void post_forward(const nn::Module& m) override { calls.push_back("post_forward " + m.name()); }
  void pre_backward(const nn::Module& m) override { calls.push_back("pre_backward " + m.name()); }
  void post_backward(const nn::Module& m) override { calls.push_back("post_backward " + m.name()); }
};

std::vector<float> grads_of(nn::Gpt2& m) {
  const Tensor& g = m.params().flat_grads();
  return std::vector<float>(g.data<float>(), g.data<float>() + g.numel());
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST(ModuleRunner, SubRangesComposeToTheWholeModel) {
  const nn::Gpt2Config cfg = small_config();
  const Batch batch(cfg.vocab_size);
  nn::Gpt2 whole(cfg), parts(cfg);
  whole.init_weights(7);
  parts.init_weights(7);
  RecordingHooks whole_hooks, part_hooks;
  whole.set_hooks(&whole_hooks);
  parts.set_hooks(&part_hooks);

  nn::Ctx ctx_whole;
  const float loss = whole.forward_backward(ctx_whole, batch.in.data(), batch.tg.data(), batch.B, batch.T, 1.0f);

  // The same micro-batch as three "stages": [embedding, h.0], [h.1, h.2], [ln_f, head].
  nn::ModuleRunner& runner = parts.runner();
  ASSERT_EQ(runner.size(), size_t(cfg.n_layer) + 3);
  nn::Ctx ctx;
  ctx.training = true;
  nn::Pass pass{.inputs = batch.in.data(), .targets = batch.tg.data(), .B = batch.B, .T = batch.T,
            .grad_scale = 1.0f / static_cast<float>(batch.count())};
  const size_t cut1 = 2, cut2 = 4, end = runner.size();
  Tensor x1 = runner.forward(ctx, pass, 0, cut1, Tensor());
  Tensor x2 = runner.forward(ctx, pass, cut1, cut2, x1);
  EXPECT_FALSE(runner.forward(ctx, pass, cut2, end, x2).defined());  // the loss block hands out no activation
  Tensor d2 = runner.backward(ctx, pass, cut2, end, Tensor());
  Tensor d1 = runner.backward(ctx, pass, cut1, cut2, d2);
  EXPECT_FALSE(runner.backward(ctx, pass, 0, cut1, d1).defined());  // no gradient for token ids
  ASSERT_TRUE(d1.defined() && d2.defined());
  EXPECT_EQ(d1.shape(), (Shape{int64_t(batch.B) * batch.T, cfg.n_embd}));

  EXPECT_EQ(static_cast<float>(pass.loss_sum / static_cast<double>(batch.count())), loss);
  EXPECT_TRUE(bitwise_equal(grads_of(parts), grads_of(whole)));
  EXPECT_EQ(part_hooks.calls, whole_hooks.calls);
  // Each unit's hooks come in pairs, wte's slices around the whole of backward (Note [Tied parameters]).
  ASSERT_FALSE(whole_hooks.calls.empty());
  EXPECT_EQ(whole_hooks.calls.front(), "pre_forward transformer.wpe");
  EXPECT_EQ(whole_hooks.calls.back().rfind("post_backward transformer.wte.weight[", 0), 0u)
      << whole_hooks.calls.back();
  parts.set_hooks(nullptr);
  whole.set_hooks(nullptr);
}

// The input gradient a sub-range returns is the loss's gradient: <d1, v> against a central difference along v.
TEST(ModuleRunner, SubRangeInputGradientMatchesAFiniteDifference) {
  const nn::Gpt2Config cfg = small_config();
  const Batch batch(cfg.vocab_size);
  nn::Gpt2 model(cfg);
  model.init_weights(11);
  nn::ModuleRunner& runner = model.runner();
  const size_t cut = 2, end = runner.size();
  nn::Pass pass{.inputs = batch.in.data(), .targets = batch.tg.data(), .B = batch.B, .T = batch.T, .grad_scale = 1.0f};

  nn::Ctx ctx;
  ctx.training = true;
  const Tensor x = runner.forward(ctx, pass, 0, cut, Tensor());
  std::vector<float> x0(x.data<float>(), x.data<float>() + x.numel());
  runner.forward(ctx, pass, cut, end, x);
  const Tensor dx = runner.backward(ctx, pass, cut, end, Tensor());
  // Along a random direction of the size of x's own values (about 0.02: the embeddings' scale), so the step stays
  // in the range where the loss is close to linear.
  const std::vector<float> v = ds::testing::randn(static_cast<size_t>(x.numel()), 3, 0.02f);
  double analytic = 0;
  for (size_t i = 0; i < v.size(); ++i) analytic += double(dx.data<float>()[i]) * v[i];

  auto loss_at = [&](float step) {
    nn::Ctx c;
    c.training = false;
    Tensor xs = c.act().alloc(x.shape());
    for (size_t i = 0; i < v.size(); ++i) xs.data<float>()[i] = x0[i] + step * v[i];
    nn::Pass p = pass;
    runner.forward(c, p, cut, end, xs);
    return p.loss_sum;
  };
  const float h = 0.03f;  // the central difference converges to within 0.2% here (1e-1: 1%, 3e-3: float noise)
  const double numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
  EXPECT_NEAR(analytic, numeric, 1e-2 * std::fabs(numeric)) << "analytic " << analytic;
}

TEST(ModuleRunner, CheckpointingGivesBitIdenticalGradientsWithFewerActivations) {
  const nn::Gpt2Config cfg = small_config();
  const Batch batch(cfg.vocab_size);
  nn::Gpt2 plain(cfg), checkpointed(cfg);
  plain.init_weights(3);
  checkpointed.init_weights(3);
  checkpointed.runner().set_checkpointing(true);
  RecordingHooks plain_hooks, ckpt_hooks;
  plain.set_hooks(&plain_hooks);
  checkpointed.set_hooks(&ckpt_hooks);
  nn::Ctx a, b;
  for (int step = 0; step < 2; ++step) {  // a second pass reuses the arenas
    a.reset();
    b.reset();
    const float la = plain.forward_backward(a, batch.in.data(), batch.tg.data(), batch.B, batch.T, 1.0f);
    const float lb = checkpointed.forward_backward(b, batch.in.data(), batch.tg.data(), batch.B, batch.T, 1.0f);
    EXPECT_EQ(la, lb);
    EXPECT_TRUE(bitwise_equal(grads_of(plain), grads_of(checkpointed))) << "step " << step;
  }
  EXPECT_EQ(ckpt_hooks.calls, plain_hooks.calls);
  EXPECT_LT(b.act().high_water(), a.act().high_water());
  // What stays saved after the pass: the embedding's ids, each checkpointed block's input, ln_f's and the head's
  // stash; the recomputed blocks' own saves were dropped after their backward (they would hold memory otherwise).
  EXPECT_EQ(b.saved_mark(), size_t(cfg.n_layer) + 3);
  EXPECT_GT(a.saved_mark(), size_t(cfg.n_layer) * 8);
  EXPECT_GT(checkpointed.runner().take_recompute_seconds(), 0.0);
  EXPECT_EQ(plain.runner().take_recompute_seconds(), 0.0);
  plain.set_hooks(nullptr);
  checkpointed.set_hooks(nullptr);
}

// Evaluation never checkpoints (nothing is saved), and full logits agree with and without it.
TEST(ModuleRunner, CheckpointingLeavesEvaluationAlone) {
  const nn::Gpt2Config cfg = small_config();
  const Batch batch(cfg.vocab_size);
  nn::Gpt2 model(cfg);
  model.init_weights(9);
  nn::Ctx ctx;
  std::vector<float> plain(size_t(batch.B) * batch.T * cfg.vocab_size), ckpt(plain.size());
  model.forward_logits(ctx, batch.in.data(), batch.B, batch.T, plain.data());
  model.runner().set_checkpointing(true);
  ctx.reset();
  model.forward_logits(ctx, batch.in.data(), batch.B, batch.T, ckpt.data());
  EXPECT_TRUE(bitwise_equal(plain, ckpt));
  EXPECT_EQ(model.runner().take_recompute_seconds(), 0.0);
}
