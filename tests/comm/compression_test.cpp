// Communication compression: the 1-bit kernels against a scalar reference, the 1-bit all-reduce against
// DeepSpeed's compressed_allreduce written out plainly (per rank, per tensor, unpacked signs) over several rounds of
// error feedback at worlds 1-4, its bytes on the wire against the formula, and the throttled link: unchanged
// results and counts, and link time equal to the model's sum (no wall time is asserted).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "comm/onebit_reference.h"
#include "ds/comm/local/local_comm.h"
#include "ds/comm/onebit.h"
#include "ds/comm/throttle.h"
#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds {
namespace {

using test::random_vector;
using test::ReferenceOneBit;
using test::sgn;

TEST(OneBitKernels, CompressAndDecompressMatchAScalarReference) {
  for (const size_t n : {size_t{8}, size_t{64}, size_t{40000}}) {
    for (const size_t block : {n, size_t{16}, size_t{256}}) {
      std::vector<float> x = random_vector(n, 1 + n), err = random_vector(n, 2 + n);
      x[0] = 0.0f;
      x[1] = -0.0f;
      std::vector<float> ref_x(n), ref_err(n), ref_scale((n + block - 1) / block);
      for (size_t b = 0; b < n; b += block) {
        double sq = 0;
        for (size_t i = b; i < std::min(n, b + block); ++i) {
          ref_x[i] = x[i] + err[i];
          sq += double(ref_x[i]) * ref_x[i];
        }
        ref_scale[b / block] = static_cast<float>(std::sqrt(sq / double(std::min(n, b + block) - b)));
      }
      for (size_t i = 0; i < n; ++i) ref_err[i] = ref_x[i] - ref_scale[i / block] * sgn(ref_x[i]);
      std::vector<uint8_t> bits(n / 8);
      std::vector<float> scales(ref_scale.size());
      cpu::onebit_compress(x.data(), err.data(), n, block, bits.data(), scales.data());
      for (size_t b = 0; b < scales.size(); ++b) ASSERT_FLOAT_EQ(scales[b], ref_scale[b]) << b;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ((bits[i / 8] >> (i % 8)) & 1, ref_x[i] >= 0 ? 1 : 0) << i;
        ASSERT_FLOAT_EQ(err[i], ref_err[i]) << i;
      }
      std::vector<float> out(n, 1.0f);
      cpu::onebit_decompress(bits.data(), n, block, scales.data(), 0.5f, out.data(), /*accumulate=*/true);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 1.0f + 0.5f * scales[i / block] * sgn(ref_x[i])) << i;
      cpu::onebit_decompress(bits.data(), n, block, scales.data(), 1.0f, out.data(), /*accumulate=*/false);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], scales[i / block] * sgn(ref_x[i])) << i;
    }
  }
}

TEST(OneBitAllReduce, FollowsTheReferenceOverRoundsOfErrorFeedback) {
  const std::vector<int64_t> sizes = {5, 64, 1000, 0, 333};
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  constexpr int kRounds = 4;
  for (const int64_t block : {int64_t{0}, int64_t{16}, int64_t{256}}) {  // DeepSpeed's scales, then blocks
    for (const int W : {2, 3, 4}) {
      SCOPED_TRACE(testing::Message() << "world " << W << ", scale block " << block);
      std::vector<std::vector<std::vector<float>>> inputs(kRounds);  // [round][rank]
      for (int k = 0; k < kRounds; ++k)
        for (int w = 0; w < W; ++w) inputs[k].push_back(random_vector(static_cast<size_t>(total), 100 * k + w));
      ReferenceOneBit reference(W, sizes, block);
      std::vector<std::vector<float>> expected;
      for (int k = 0; k < kRounds; ++k) expected.push_back(reference.run(inputs[k]));
      std::vector<std::vector<std::vector<float>>> got(kRounds, std::vector<std::vector<float>>(size_t(W)));
      std::vector<comm::CommStats> stats(static_cast<size_t>(W));
      std::vector<int64_t> message(static_cast<size_t>(W));
      comm::run_local_world(W, [&](comm::Communicator& comm) {
        comm::OneBitAllReduce onebit(comm, sizes, block);
        message[comm.rank()] = onebit.message_bytes();
        for (int k = 0; k < kRounds; ++k) {
          std::vector<float> buffer = inputs[k][comm.rank()];
          onebit.run(buffer.data());
          got[k][comm.rank()] = buffer;
        }
        stats[comm.rank()] = comm.stats();
      });
      for (int k = 0; k < kRounds; ++k) {
        for (int w = 0; w < W; ++w) {
          ASSERT_EQ(got[k][w].size(), expected[k].size());
          for (size_t i = 0; i < expected[k].size(); ++i)
            ASSERT_NEAR(got[k][w][i], expected[k][i], 1e-5f * (1 + std::fabs(expected[k][i])))
                << "round " << k << " rank " << w << " element " << i;
        }
      }
      // Bytes on the wire per round: one message to every other rank, then every rank's message gathered.
      const comm::CommStats& s = stats[0];
      const auto a2a = static_cast<size_t>(comm::Collective::all_to_all);
      const auto ag = static_cast<size_t>(comm::Collective::all_gather);
      EXPECT_EQ(s.bytes[a2a], kRounds * message[0] * (W - 1));
      EXPECT_EQ(s.bytes[ag], kRounds * message[0] * (W - 1));
      const int64_t fp32_all_reduce = 2 * 4 * total * (W - 1) / W;
      std::printf("world %d, scale block %3lld: 1-bit all-reduce sends %lld bytes per round, an fp32 all-reduce %lld "
                  "(1/%.1f)\n", W, static_cast<long long>(block), static_cast<long long>(s.total_bytes() / kRounds),
                  static_cast<long long>(fp32_all_reduce), double(fp32_all_reduce) / double(s.total_bytes() / kRounds));
    }
  }
}

TEST(OneBitAllReduce, OneRankKeepsTheBufferAndBytesCannotBeReduced) {
  auto self = comm::make_self_communicator();
  comm::OneBitAllReduce onebit(*self, {3, 20});
  std::vector<float> buffer = random_vector(23, 5), before = buffer;
  onebit.run(buffer.data());
  EXPECT_EQ(buffer, before);
  std::vector<uint8_t> bytes(4);
  EXPECT_THROW(self->all_reduce(bytes.data(), bytes.size(), DType::u8), CommError);
}

TEST(ThrottledLink, ParsesTheNetworkModelAndRefusesOtherText) {
  const comm::LinkModel a = comm::parse_link_model("1gbit,100us");
  EXPECT_DOUBLE_EQ(a.bandwidth, 1.25e8);
  EXPECT_DOUBLE_EQ(a.latency, 1e-4);
  EXPECT_EQ(comm::describe(a), "1 Gbit/s, 100 us");
  const comm::LinkModel b = comm::parse_link_model("2.5GB/s, 1ms");
  EXPECT_DOUBLE_EQ(b.bandwidth, 2.5e9);
  EXPECT_DOUBLE_EQ(b.latency, 1e-3);
  EXPECT_DOUBLE_EQ(comm::parse_link_model("100mbit").latency, 0.0);
  for (const char* bad : {"", "fast", "1 gbit", "1gbit,soon", "-1gbit", "1gbit,5 parsecs"})
    EXPECT_THROW(comm::parse_link_model(bad), ConfigError) << bad;
}

TEST(ThrottledLink, KeepsResultsAndCountsAndChargesTheModelledTime) {
  constexpr int W = 3;
  const comm::LinkModel link{4e9, 2e-6};  // fast enough to keep the test short
  constexpr size_t n = 3000;
  std::vector<double> busy(W), expected(W);
  std::vector<std::vector<float>> plain(W), throttled(W);
  std::vector<comm::CommStats> plain_stats(W), throttled_stats(W);
  auto body = [&](comm::Communicator& c, std::vector<std::vector<float>>& out) {
    std::vector<float> x = random_vector(n, 7 + c.rank());
    c.all_reduce(x.data(), n, DType::f32);
    std::vector<float> gathered(n * W);
    c.all_gather(x.data(), gathered.data(), n, DType::f32);
    std::vector<float> part(n);
    c.reduce_scatter(gathered.data(), part.data(), n, DType::f32);
    auto sub = c.split(c.rank() % 2, c.rank());  // ranks {0, 2} and {1}
    sub->broadcast(part.data(), n, DType::f32, 0);
    out[c.rank()] = part;
  };
  comm::run_local_world(W, [&](comm::Communicator& c) {
    body(c, plain);
    plain_stats[c.rank()] = c.stats();
  });
  comm::run_local_world(W, [&](comm::Communicator& inner) {
    auto c = comm::make_throttled(inner, link);
    body(*c, throttled);
    throttled_stats[c->rank()] = c->stats();
    busy[c->rank()] = c->link_busy_seconds();
    const int64_t b = int64_t(n) * 4;
    const int sub_world = c->rank() % 2 == 0 ? 2 : 1;
    expected[c->rank()] = comm::link_seconds(comm::Collective::all_reduce, W, 2 * b * (W - 1) / W, link) +
                          comm::link_seconds(comm::Collective::all_gather, W, b * (W - 1), link) +
                          comm::link_seconds(comm::Collective::reduce_scatter, W, b * (W - 1), link) +
                          comm::link_seconds(comm::Collective::broadcast, sub_world, sub_world > 1 ? b : 0, link);
  });
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(plain[r], throttled[r]) << r;
    EXPECT_EQ(plain_stats[r].total_bytes(), throttled_stats[r].total_bytes()) << r;
    EXPECT_NEAR(busy[r], expected[r], 1e-8) << r;
  }
  EXPECT_NEAR(comm::link_seconds(comm::Collective::all_reduce, 4, 1000, {1000.0, 0.5}), 6 * 0.5 + 1.0, 1e-12);
  EXPECT_NEAR(comm::link_seconds(comm::Collective::barrier, 5, 0, {1000.0, 0.5}), 3 * 0.5, 1e-12);
}

TEST(ThrottledLink, CommunicatorsWithinANodeCrossNoLink) {
  comm::LinkModel link{1e9, 1e-6};
  link.node_size = 2;
  std::vector<double> after_node(4), after_cross(4);
  comm::run_local_world(4, [&](comm::Communicator& inner) {
    auto c = comm::make_throttled(inner, link);
    auto node = c->split(c->rank() / 2, c->rank());   // {0, 1} and {2, 3}: one node each
    auto cross = c->split(c->rank() % 2, c->rank());  // {0, 2} and {1, 3}: across nodes
    std::vector<float> x(1000, 1.0f);
    const double start = c->link_busy_seconds();
    node->all_reduce(x.data(), x.size(), DType::f32);
    after_node[c->rank()] = c->link_busy_seconds() - start;
    cross->all_reduce(x.data(), x.size(), DType::f32);
    after_cross[c->rank()] = c->link_busy_seconds() - start;
  });
  const double expected = comm::link_seconds(comm::Collective::all_reduce, 2, 2 * 4000 / 2, link);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(after_node[r], 0.0) << r;
    EXPECT_NEAR(after_cross[r], expected, 1e-9) << r;
  }
}

}  // namespace
}  // namespace ds
