// The engine on a GPU (--device cuda) against the same engine on the CPU, pass by pass over ragged batches that
// mix new prompts, prompt continuations and decodes, for head sizes from 15 to 256 (the attention kernel's
// vector and scalar paths, partial and full lanes) and block sizes 1, 16 and 64; and greedy generation on the GPU
// against the full-recompute reference. These run where a GPU and a CUDA build are present and are skipped
// elsewhere; without them, asking for CUDA must be a clear error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/full_recompute.h"
#include "ds/core/device.h"
#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/inference/device_forward.h"
#include "ds/inference/engine.h"

namespace ds::inference {
namespace {

nn::Gpt2Config config_of(int n_embd, int n_head) {
  nn::Gpt2Config c;
  c.name = "device-test";
  c.n_layer = 2;
  c.n_head = n_head;
  c.n_embd = n_embd;
  c.vocab_size = 512;
  c.block_size = 160;
  return c;
}

struct Model {
  explicit Model(const nn::Gpt2Config& c) : gpt(c, 1, /*with_grads=*/false) {
    gpt.init_weights(11);
    runner = std::make_shared<InferenceModel>(gpt);
  }
  nn::Gpt2 gpt;
  std::shared_ptr<InferenceModel> runner;
};

EngineConfig engine_config(int32_t block_size, Device device) {
  EngineConfig ec;
  ec.kv_block_size = block_size;
  ec.kv_block_count = 8 * ((160 + block_size - 1) / block_size);  // room for 8 full-length sequences
  ec.max_ragged_batch_size = 256;
  ec.max_ragged_sequence_count = 16;
  ec.device = device;
  return ec;
}

using testing::argmax;
using testing::random_tokens;

bool have_gpu() { return cuda::available(); }

TEST(DeviceForward, ParsesDeviceNames) {
  EXPECT_TRUE(parse_device("cpu").is_cpu());
  EXPECT_EQ(parse_device("cuda"), Device::cuda(0));
  EXPECT_EQ(parse_device("cuda:3"), Device::cuda(3));
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", "CPU", ""}) {
    try {
      parse_device(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("cpu, cuda or cuda:N"), std::string::npos) << e.what();
    }
  }
}

TEST(DeviceForward, CudaWithoutAGpuIsAClearError) {
  if (have_gpu()) GTEST_SKIP() << "a GPU is present";
  const Model m(config_of(64, 4));
  try {
    InferenceEngine engine(m.runner, engine_config(16, Device::cuda(0)));
    ADD_FAILURE() << "an engine on cuda:0 was built with no GPU";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
}

// The same passes on both engines; every pass's logits must agree.
void compare_passes(const nn::Gpt2Config& config, int32_t block_size) {
  const int n_embd = config.n_embd, n_head = config.n_head;
  const Model m(config);
  InferenceEngine cpu(m.runner, engine_config(block_size, Device::cpu()));
  InferenceEngine gpu(m.runner, engine_config(block_size, Device::cuda(0)));
  const int V = m.gpt.config().vocab_size;
  Rng rng(42 + n_embd + block_size);
  std::map<uint64_t, std::vector<int32_t>> prompts = {
      {1, random_tokens(rng, 5, V)}, {2, random_tokens(rng, 70, V)}, {3, random_tokens(rng, 1, V)},
      {4, random_tokens(rng, 33, V)}, {5, random_tokens(rng, 130, V)}};
  std::map<uint64_t, size_t> fed;           // prompt tokens already put
  std::map<uint64_t, int32_t> next_token;   // greedy continuation once the prompt is in
  int passes = 0;
  while (passes < 40) {
    // Pass composition: every running decode, then prompt chunks of at most 29 tokens, new sequences joining
    // over the first passes.
    std::vector<uint64_t> uids;
    std::vector<std::vector<int32_t>> toks;
    for (auto& [uid, p] : prompts) {
      if (uid > static_cast<uint64_t>(2 + passes)) continue;
      if (fed[uid] < p.size()) {
        const size_t n = std::min<size_t>(29, p.size() - fed[uid]);
        toks.emplace_back(p.begin() + fed[uid], p.begin() + fed[uid] + n);
        fed[uid] += n;
      } else if (next_token.count(uid) && cpu.kv_state().find(uid)->seen_tokens + 1 < 160) {
        toks.push_back({next_token[uid]});
      } else {
        continue;
      }
      uids.push_back(uid);
    }
    if (uids.empty()) break;
    std::vector<std::span<const int32_t>> spans(toks.begin(), toks.end());
    const std::span<const float> a = cpu.put(uids, spans);
    const std::vector<float> ref(a.begin(), a.end());
    const std::span<const float> b = gpu.put(uids, spans);
    ASSERT_EQ(b.size(), ref.size());
    double worst = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst = std::max(worst, std::abs(double(ref[i]) - double(b[i])));
      scale = std::max(scale, std::abs(double(ref[i])));
    }
    EXPECT_LE(worst, 1e-4 * std::max(1.0, scale)) << "pass " << passes << " C" << n_embd << " NH" << n_head
                                                   << " block " << block_size << " (largest logit " << scale << ")";
    for (size_t s = 0; s < uids.size(); ++s) {
      if (fed[uids[s]] == prompts[uids[s]].size()) {
        next_token[uids[s]] = argmax(std::span<const float>(ref).subspan(s * V, static_cast<size_t>(V)));
      }
    }
    ++passes;
  }
  EXPECT_GE(passes, 8);
}

void compare_passes(int n_embd, int n_head, int32_t block_size) {
  compare_passes(config_of(n_embd, n_head), block_size);
}

TEST(DeviceForward, CudaMatchesCpuPassByPass) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU (or a build without CUDA)";
  for (const int32_t bs : {1, 16, 64}) {
    compare_passes(64, 4, bs);   // head size 16: lanes without a channel
    compare_passes(96, 2, bs);   // head size 48: a lane's second channel only on some lanes
    compare_passes(256, 1, bs);  // head size 256: 8 channels a lane, the most the kernel takes
    compare_passes(60, 4, bs);   // head size 15: no 16-byte loads
  }
}

// MoE blocks (Note [MoE serving]): routed on the host, expert groups on the GPU; top-1 and top-2 over 4 experts in
// both layers, and Residual-MoE.
TEST(DeviceForward, CudaMoeMatchesCpuPassByPass) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU (or a build without CUDA)";
  for (const auto& [k, residual] : {std::pair{1, false}, std::pair{2, false}, std::pair{2, true}}) {
    nn::Gpt2Config c = config_of(64, 4);
    c.moe.num_experts = {4};
    c.moe.options.gate.k = k;
    c.moe.options.gate.drop_tokens = false;
    c.moe.options.use_residual = residual;
    SCOPED_TRACE(::testing::Message() << "top-" << k << (residual ? " residual" : ""));
    compare_passes(c, 16);
  }
}

TEST(DeviceForward, CudaGreedyEqualsFullRecompute) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU (or a build without CUDA)";
  Model m(config_of(64, 4));
  InferenceEngine gpu(m.runner, engine_config(16, Device::cuda(0)));
  const int V = m.gpt.config().vocab_size;
  Rng rng(5);
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(rng, 9, V), random_tokens(rng, 40, V),
                                                     random_tokens(rng, 2, V)};
  const int n = 12;
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<uint64_t> uids = {10, 11, 12};
  std::vector<std::vector<int32_t>> toks(prompts.begin(), prompts.end());
  for (int step = 0; step < n; ++step) {  // one batched pass per step: the prompts first, then decodes
    std::vector<std::span<const int32_t>> spans(toks.begin(), toks.end());
    const std::span<const float> logits = gpu.put(uids, spans);
    for (size_t s = 0; s < uids.size(); ++s) {
      got[s].push_back(argmax(logits.subspan(s * V, static_cast<size_t>(V))));
      toks[s] = {got[s].back()};
    }
  }
  for (size_t s = 0; s < prompts.size(); ++s)
    EXPECT_EQ(got[s], testing::full_recompute_greedy(m.gpt, prompts[s], n)) << "sequence " << s;
  for (const uint64_t u : uids) EXPECT_TRUE(gpu.flush(u));
  EXPECT_EQ(gpu.free_blocks(), gpu.kv_state().kv_block_count());
}

}  // namespace
}  // namespace ds::inference
