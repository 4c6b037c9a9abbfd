// ZeRO++ at stage 3 (zero/quantized_comm.h, the hpZ secondary copy in zero/parameter_coordinator.h): hpZ alone moves
// the backward's gathers into the group and changes no bit of stage 3's trajectory; qwZ and qgZ follow it within
// their quantization error (measured and printed); and the bytes crossing groups (the data-parallel group's
// traffic, hpZ's group excluded) fall to a third of stage 3's or less. The kernels and collectives are checked
// against plain references first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/local_ranks.h"
#include "common/zero_case.h"
#include "ds/comm/local/local_comm.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/zero/quantized_comm.h"

namespace ds {
namespace {

// Plain symmetric block quantization: what a value comes back as.
std::vector<float> round_trip(const std::vector<float>& x, int bits, size_t block) {
  const float qmax = bits == 8 ? 127.0f : 7.0f;
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size(); b += block) {
    const size_t e = std::min(x.size(), b + block);
    float amax = 0;
    for (size_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax > 0 ? amax / qmax : 1.0f;
    for (size_t i = b; i < e; ++i) out[i] = std::clamp(std::round(x[i] * (1.0f / scale)), -qmax, qmax) * scale;
  }
  return out;
}

std::vector<float> values(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.normal() * (1.0f + static_cast<float>(rng.next_u64() % 4));
  return v;
}

TEST(QuantizeBlocks, RoundTripMatchesAPlainReference) {
  for (const int bits : {8, 4}) {
    for (const size_t n : {size_t{16}, size_t{300}, size_t{1001}}) {
      std::vector<float> x = values(n, n + bits);
      std::fill(x.begin(), x.begin() + std::min<size_t>(n, 64), 0.0f);  // a block of zeros
      const size_t block = 64;
      std::vector<uint8_t> q(n);
      std::vector<float> scales((n + block - 1) / block), out(n, 0.5f);
      cpu::quantize_blocks(x.data(), n, bits, block, q.data(), scales.data());
      cpu::dequantize_blocks(q.data(), scales.data(), n, bits, block, out.data(), false);
      const std::vector<float> expected = round_trip(x, bits, block);
      for (size_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(out[i], expected[i]) << bits << " bits, element " << i;
      cpu::dequantize_blocks(q.data(), scales.data(), n, bits, block, out.data(), true);
      for (size_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(out[i], 2 * expected[i]) << i;
    }
  }
}

TEST(QuantizedCollectives, AllGatherAndReduceScatterMatchTheReference) {
  constexpr size_t kCount = 200;  // not a multiple of the block: the last block is short
  for (const int W : {2, 3}) {
    std::vector<std::vector<float>> input(static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) input[r] = values(kCount * W, 7 + r);
    std::vector<std::vector<float>> gathered(W), reduced(W);
    comm::run_local_world(W, [&](comm::Communicator& comm) {
      const int r = comm.rank();
      std::vector<float> full(kCount * W);
      zero::quantized_all_gather_async(comm, input[r].data(), full.data(), kCount, DType::f32, {8, 64})->wait();
      gathered[r] = full;
      std::vector<float> data = input[r];
      zero::quantized_reduce_scatter_async(comm, data.data(), kCount, DType::f32, {4, 64})->wait();
      reduced[r] = std::vector<float>(data.begin() + r * kCount, data.begin() + (r + 1) * kCount);
    });
    for (int r = 0; r < W; ++r) {
      for (int w = 0; w < W; ++w) {
        const std::vector<float> chunk(input[w].begin(), input[w].begin() + kCount);
        const std::vector<float> q = round_trip(chunk, 8, 64);
        for (size_t i = 0; i < kCount; ++i) ASSERT_FLOAT_EQ(gathered[r][w * kCount + i], q[i]) << r << " " << w;
      }
      std::vector<float> sum(input[r].begin() + r * kCount, input[r].begin() + (r + 1) * kCount);  // exact own
      for (int w = 0; w < W; ++w) {
        if (w == r) continue;
        const std::vector<float> q =
            round_trip(std::vector<float>(input[w].begin() + r * kCount, input[w].begin() + (r + 1) * kCount), 4, 64);
        for (size_t i = 0; i < kCount; ++i) sum[i] += q[i];
      }
      for (size_t i = 0; i < kCount; ++i) ASSERT_NEAR(reduced[r][i], sum[i], 1e-5f * (1 + std::fabs(sum[i]))) << i;
    }
  }
}

struct Variant {
  const char* name;
  const char* extra;
};

TEST(ZeroPlusPlus, FollowsStage3WithinTheQuantizationErrorAndCutsCrossGroupTraffic) {
  using zero_case::RunResult;
  const Variant variants[] = {
      {"stage 3", ""},
      {"hpZ 2", ", \"zero_hpz_partition_size\": 2"},
      {"qwZ + qgZ", ", \"zero_quantized_weights\": true, \"zero_quantized_gradients\": true"},
      {"qwZ + hpZ 2 + qgZ",
       ", \"zero_quantized_weights\": true, \"zero_hpz_partition_size\": 2, \"zero_quantized_gradients\": true"},
  };
  for (const int W : {2, 4}) {
    std::vector<RunResult> runs;
    for (const Variant& v : variants) {
      if (W == 2 && std::string(v.name) == "qwZ + qgZ") continue;  // world 4 covers it
      runs.push_back(testing::on_local_ranks<RunResult>(W, [&](comm::Communicator& comm) {
        return zero_case::run_case(comm, 3, 4 / W, 1, false, v.extra);
      })[0]);
      const RunResult& base = runs.front();
      const RunResult& r = runs.back();
      double max_loss = 0, max_param = 0;
      for (size_t s = 0; s < r.losses.size(); ++s)
        max_loss = std::max(max_loss, std::fabs(r.losses[s] - base.losses[s]));
      for (size_t i = 0; i < r.params.size(); ++i)
        max_param = std::max(max_param, double(std::fabs(r.params[i] - base.params[i])));
      std::printf("world %d, %-18s: cross-group bytes/step %10lld (%.3f of stage 3), max |loss - stage 3| %.2e, "
                  "max |param - stage 3| %.2e\n",
                  W, v.name, static_cast<long long>(r.bytes_per_step),
                  double(r.bytes_per_step) / double(base.bytes_per_step), max_loss, max_param);
      const std::string name = v.name;
      if (name == "hpZ 2") {  // exact: the backward gathers the same values from the group's copies
        EXPECT_EQ(r.losses, base.losses);
        EXPECT_EQ(r.params, base.params);
        EXPECT_LT(r.bytes_per_step, base.bytes_per_step);
      } else if (name != "stage 3") {
        EXPECT_GT(max_param, 0.0) << name << " should not be exact";
        EXPECT_LT(max_loss, 0.05) << name;  // int8 weights, int4 gradients: a few 1e-3 on this model
        EXPECT_LT(max_param, 0.05) << name;
      }
      if (name == "qwZ + hpZ 2 + qgZ") { EXPECT_LE(r.bytes_per_step * 3, base.bytes_per_step); }
    }
  }
}

TEST(ZeroPlusPlus, ItsKeysAreStage3sAndTheGroupMustDivideTheRanks) {
  const std::string keys =
      R"("zero_quantized_weights": true, "zero_hpz_partition_size": 2, "zero_quantized_gradients": true)";
  const config::DeepSpeedConfig at3 = config::parse_config(
      R"({"train_batch_size": 4, "zero_optimization": {"stage": 3, )" + keys + "}}", 2, "zeropp");
  EXPECT_TRUE(at3.warnings.empty()) << at3.warnings.front();
  EXPECT_TRUE(at3.zero.zero_quantized_weights && at3.zero.zero_quantized_gradients);
  const config::DeepSpeedConfig at2 = config::parse_config(
      R"({"train_batch_size": 4, "zero_optimization": {"stage": 2, )" + keys + "}}", 2, "zeropp");
  ASSERT_EQ(at2.warnings.size(), 1u);
  EXPECT_NE(at2.warnings[0].find("zero_hpz_partition_size' (stage 3 only)"), std::string::npos) << at2.warnings[0];
  const config::DeepSpeedConfig odd = config::parse_config(
      R"({"train_batch_size": 3, "zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2}})", 3, "zeropp");
  try {
    testing::on_local_ranks<int>(3, [&](comm::Communicator& comm) {
      engine::Engine e(zero_case::tiny(), odd, zero_case::kT, &comm, 1);
      return 0;
    });
    ADD_FAILURE() << "hpZ groups of 2 over 3 ranks were accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("must divide the data-parallel size 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ds
