// Paged attention against the contiguous training kernel (attention_forward): two sequences of different lengths
// whose K and V sit in shuffled blocks of a shared pool, queried for their last few positions (a prefill chunk)
// and their last one (a decode), at head sizes on and off the vector path (multiples of 8, with key counts that
// leave a remainder of the 8-key groups, and heads wider than one 64-channel value sweep), and long enough to
// run in parallel, where a lone decode splits its heads over threads. Chunks of 8 tokens or more take the prompt
// path (keys transposed, tiles of 4 queries): whole prompts from position 0 and continuations, tile remainders,
// head sizes with an odd number of 8-channel vectors. Every case runs over an fp32 cache and a bf16 one; for bf16
// the reference gets the same keys and values rounded to bf16, so both sides must agree as closely as for fp32.
// And every case runs on the AVX2 kernels and on the machine's best: the AVX-512 prompt path takes values 32 and
// 16 channels at a time and leaves a last 8 to the AVX2 kernel (head sizes 8 to 56 and 96 and 128 here; chunks of
// 31 and 27 end in a tile of 3 queries).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/isa_scope.h"
#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

struct Case {
  int C, NH, block;
  int len0 = 13, len1 = 29, chunk = 5;  // sequence lengths; the last `chunk` positions of sequence 0 are queried
  ds::DType kv = ds::DType::f32;        // the cache's element type
  std::string isa = "native";           // DS_CPU_ISA: "avx2" or the machine's best
};

class PagedAttention : public ::testing::TestWithParam<Case> {};

TEST_P(PagedAttention, MatchesContiguousAttention) {
  const auto& [C, NH, bs, len0, len1, chunk, kv_dtype, isa] = GetParam();
  const ds::testing::IsaScope isa_scope(isa);
  const std::vector<int> lengths = {len0, len1};
  const int max_len = std::max(len0, len1);
  const int blocks_per_seq = (max_len + bs - 1) / bs;
  const int pool = blocks_per_seq * 2 + 3;
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(3));
  std::vector<std::vector<int32_t>> tables(2);
  for (int s = 0; s < 2; ++s)
    tables[s].assign(ids.begin() + s * blocks_per_seq, ids.begin() + (s + 1) * blocks_per_seq);
  std::vector<float> kv(static_cast<size_t>(pool) * bs * 2 * C, NAN);  // unused slots poison the result

  // Reference per sequence: attention_forward over its whole length.
  std::vector<std::vector<float>> qkv(2), ref(2);
  for (int s = 0; s < 2; ++s) {
    const int T = lengths[s];
    qkv[s] = randn(static_cast<size_t>(T) * 3 * C, 10 + s);
    if (kv_dtype == ds::DType::bf16) {  // K and V as a bf16 cache holds them
      std::vector<uint16_t> half(2 * static_cast<size_t>(C));
      for (int t = 0; t < T; ++t) {
        float* k = qkv[s].data() + int64_t(t) * 3 * C + C;
        ds::cpu::f32_to_bf16(half.data(), k, half.size());
        ds::cpu::bf16_to_f32(k, half.data(), half.size());
      }
    }
    ref[s].resize(static_cast<size_t>(T) * C);
    std::vector<float> att(static_cast<size_t>(NH) * T * T);
    ds::cpu::attention_forward(ref[s].data(), att.data(), qkv[s].data(), 1, T, C, NH);
    for (int t = 0; t < T; ++t) {
      float* slot = kv.data() + (int64_t(tables[s][t / bs]) * bs + t % bs) * 2 * C;
      std::copy_n(qkv[s].data() + int64_t(t) * 3 * C + C, 2 * C, slot);
    }
  }
  // The batch: the last 5 positions of sequence 0 (a chunk), the last position of sequence 1 (a decode).
  std::vector<float> q;
  std::vector<int32_t> seq, pos;
  for (int t = lengths[0] - chunk; t < lengths[0]; ++t) {
    q.insert(q.end(), qkv[0].begin() + int64_t(t) * 3 * C, qkv[0].begin() + int64_t(t + 1) * 3 * C);
    seq.push_back(0);
    pos.push_back(t);
  }
  const int last = lengths[1] - 1;
  q.insert(q.end(), qkv[1].begin() + int64_t(last) * 3 * C, qkv[1].begin() + int64_t(last + 1) * 3 * C);
  seq.push_back(1);
  pos.push_back(last);
  const int N = static_cast<int>(seq.size());
  const int32_t* table_ptrs[] = {tables[0].data(), tables[1].data()};
  // The scratch the kernel asks for, then a guard that must come back untouched.
  const size_t scratch_floats = ds::cpu::paged_attention_scratch_floats(max_len, C, NH);
  constexpr size_t kGuard = 4096;
  constexpr float kSentinel = -12345.0f;
  std::vector<float> scratch(scratch_floats + kGuard, kSentinel);
  std::vector<float> out(static_cast<size_t>(N) * C);
  std::vector<uint16_t> kv16(kv.size());
  ds::cpu::f32_to_bf16(kv16.data(), kv.data(), kv.size());  // NaN stays NaN
  const void* cache = kv_dtype == ds::DType::bf16 ? static_cast<const void*>(kv16.data()) : kv.data();
  ds::cpu::paged_attention_forward(out.data(), q.data(), N, seq.data(), pos.data(), table_ptrs, cache, kv_dtype, bs, C,
                                   NH, scratch.data(), max_len);
  for (size_t g = scratch_floats; g < scratch.size(); ++g)
    ASSERT_EQ(scratch[g], kSentinel) << "the kernel wrote " << g - scratch_floats << " floats past its scratch";
  for (int i = 0; i < N; ++i) {
    const float* want = ref[seq[i]].data() + int64_t(pos[i]) * C;
    for (int c = 0; c < C; ++c)
      ASSERT_NEAR(out[size_t(i) * C + c], want[c], 1e-5f) << "token " << i << " channel " << c;
  }
}

// Each shape over an fp32 and a bf16 cache.
std::vector<Case> cases() {
  const std::vector<Case> shapes = {Case{64, 4, 4}, Case{64, 2, 1}, Case{36, 3, 16}, Case{40, 4, 7},
                                    Case{128, 4, 16}, Case{192, 2, 5}, Case{128, 16, 3},
                                    Case{128, 4, 16, 300, 517, 40}, Case{192, 2, 16, 301, 517, 0},
                                    Case{40, 4, 16, 300, 517, 0}, Case{64, 8, 3, 13, 29, 13},
                                    Case{96, 4, 5, 37, 29, 30}, Case{48, 3, 1, 20, 9, 9},
                                    Case{192, 2, 16, 301, 517, 301}, Case{40, 4, 7, 40, 29, 33},
                                    Case{80, 2, 16, 40, 29, 33}, Case{96, 2, 5, 37, 29, 30},
                                    Case{112, 2, 16, 40, 29, 31}, Case{256, 2, 16, 40, 29, 27}};
  std::vector<Case> all;
  for (const char* isa : {"avx2", "native"}) {
    for (const ds::DType dtype : {ds::DType::f32, ds::DType::bf16}) {
      for (Case c : shapes) {
        c.kv = dtype;
        c.isa = isa;
        all.push_back(c);
      }
    }
  }
  return all;
}

INSTANTIATE_TEST_SUITE_P(Kernels, PagedAttention, ::testing::ValuesIn(cases()), [](const auto& info) {
  const Case& c = info.param;
  return "C" + std::to_string(c.C) + "_NH" + std::to_string(c.NH) + "_block" + std::to_string(c.block) + "_len" +
         std::to_string(c.len0) + "_" + std::to_string(c.len1) + "_chunk" + std::to_string(c.chunk) + "_" +
         std::string(ds::dtype_name(c.kv)) + "_" + c.isa;
});

}  // namespace
