// panel_gemm over pack_panels against a double reference of x @ W + bias: both weight layouts ([K, M] and its
// transpose), row counts on both sides of each register block (1..8 rows on AVX-512, 3 on AVX2) and of the
// 64-row block, widths with a partial last panel, odd K, with and without bias, large enough to run threaded, on
// the AVX2 kernels (DS_CPU_ISA=avx2) and the machine's best. Packing pads the last panel with zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/isa_scope.h"
#include "common/random_values.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::IsaScope;

using ds::testing::randn;

void check(int N, int K, int M, bool rows_of_k, bool with_bias, const std::string& isa) {
  const IsaScope scope(isa);
  const auto x = randn(size_t(N) * K, 1 + N), w = randn(size_t(K) * M, 2 + K), bias = randn(size_t(M), 3 + M);
  std::vector<float> packed(ds::cpu::panel_packed_floats(K, M), NAN);
  ds::cpu::pack_panels(packed.data(), w.data(), K, M, rows_of_k);
  std::vector<float> out(size_t(N) * M + 1, NAN);
  out.back() = 12345.0f;  // a write past the end would change it
  ds::cpu::panel_gemm(out.data(), x.data(), packed.data(), with_bias ? bias.data() : nullptr, N, K, M);
  const std::string where = "N " + std::to_string(N) + " K " + std::to_string(K) + " M " + std::to_string(M) +
                            (rows_of_k ? " [K,M]" : " [M,K]") + (with_bias ? " bias" : "") + " isa '" + isa + "'";
  for (int i = 0; i < N; ++i)
    for (int m = 0; m < M; ++m) {
      double s = with_bias ? bias[size_t(m)] : 0.0;
      for (int k = 0; k < K; ++k)
        s += double(x[size_t(i) * K + k]) * (rows_of_k ? w[size_t(k) * M + m] : w[size_t(m) * K + k]);
      ASSERT_NEAR(out[size_t(i) * M + m], s, 1e-5 * (std::sqrt(double(K)) + std::abs(s))) << where << " at " << i << ","
                                                                                            << m;
    }
  EXPECT_EQ(out.back(), 12345.0f) << where;
}

TEST(PanelGemm, MatchesReference) {
  for (const std::string isa : {"avx2", ""}) {
    for (const int N : {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16, 17, 64, 70}) {
      check(N, 37, 45, true, true, isa);
      check(N, 16, 32, false, false, isa);
    }
    for (const int M : {1, 15, 16, 17, 31, 33, 64, 100}) check(5, 24, M, M % 2 == 0, M % 3 == 0, isa);
  }
}

// Large enough for the threaded path (N * K * M >= 2^19), with many panels and a partial last one.
TEST(PanelGemm, ThreadedShapes) {
  for (const std::string isa : {"avx2", ""}) {
    check(16, 128, 1000, false, false, isa);
    check(3, 512, 389, true, true, isa);
  }
}

TEST(PanelGemm, PackingPadsTheLastPanel) {
  const int K = 3, M = 33;
  const auto w = randn(size_t(K) * M, 7);
  std::vector<float> packed(ds::cpu::panel_packed_floats(K, M), NAN);
  ASSERT_EQ(packed.size(), size_t(K) * 64);
  ds::cpu::pack_panels(packed.data(), w.data(), K, M, true);
  for (int k = 0; k < K; ++k) {
    EXPECT_EQ(packed[size_t(K) * 32 + size_t(k) * 32], w[size_t(k) * M + 32]);  // column 32 opens panel 1
    for (int j = 1; j < 32; ++j) EXPECT_EQ(packed[size_t(K) * 32 + size_t(k) * 32 + j], 0.0f);
  }
  EXPECT_THROW(ds::cpu::pack_panels(packed.data(), w.data(), 0, M, true), ds::Error);
}

// unpack_panels gives back exactly what pack_panels read, in both layouts (the device copy of the inference
// weights is made from it).
TEST(PanelGemm, UnpackingInvertsPacking) {
  for (const bool rows_of_k : {true, false}) {
    for (const auto& [K, M] : {std::pair{3, 33}, std::pair{17, 64}, std::pair{5, 1}}) {
      const auto w = randn(size_t(K) * M, 11 + K + M);
      std::vector<float> packed(ds::cpu::panel_packed_floats(K, M)), back(w.size(), NAN);
      ds::cpu::pack_panels(packed.data(), w.data(), K, M, rows_of_k);
      ds::cpu::unpack_panels(back.data(), packed.data(), K, M, rows_of_k);
      EXPECT_EQ(back, w) << "K " << K << " M " << M << " rows_of_k " << rows_of_k;
    }
  }
}

}  // namespace

namespace {

// bf16 of x (round to nearest even), as the kernel's operands: a double reference over these is exact.
double bf16_round(float x) {
  uint16_t b;
  ds::cpu::f32_to_bf16(&b, &x, 1);
  float back;
  ds::cpu::bf16_to_f32(&back, &b, 1);
  return back;
}

// panel_gemm_bf16 against a double reference over the bf16-rounded x and W: the kernel may differ only in its
// fp32 accumulation. Also: nothing written past the output, and panel_bf16_at reads back every rounded weight.
void check_bf16(int N, int K, int M, bool rows_of_k, bool with_bias, const std::string& isa) {
  const IsaScope scope(isa);
  const auto x = randn(size_t(N) * K, 11 + N), w = randn(size_t(K) * M, 12 + K), bias = randn(size_t(M), 13 + M);
  std::vector<uint32_t> packed(ds::cpu::panel_packed_bf16_words(K, M), 0xDEADBEEFu);
  ds::cpu::pack_panels_bf16(packed.data(), w.data(), K, M, rows_of_k);
  std::vector<float> out(size_t(N) * M + 1, NAN);
  out.back() = 12345.0f;
  ds::cpu::panel_gemm_bf16(out.data(), x.data(), packed.data(), with_bias ? bias.data() : nullptr, N, K, M);
  const std::string where = "N " + std::to_string(N) + " K " + std::to_string(K) + " M " + std::to_string(M) +
                            (rows_of_k ? " [K,M]" : " [M,K]") + (with_bias ? " bias" : "") + " isa '" + isa + "'";
  // The rounded operands, W as [M][K] so that the reference's inner loop is contiguous.
  std::vector<double> xr(x.size()), wr(w.size());
  for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_round(x[i]);
  for (int k = 0; k < K; ++k)
    for (int m = 0; m < M; ++m) {
      const double v = bf16_round(rows_of_k ? w[size_t(k) * M + m] : w[size_t(m) * K + k]);
      wr[size_t(m) * K + k] = v;
      ASSERT_EQ(ds::cpu::panel_bf16_at(packed.data(), K, k, m), v) << where;
    }
  for (int i = 0; i < N; ++i)
    for (int m = 0; m < M; ++m) {
      double s = with_bias ? bias[size_t(m)] : 0.0;
      for (int k = 0; k < K; ++k) s += xr[size_t(i) * K + k] * wr[size_t(m) * K + k];
      ASSERT_NEAR(out[size_t(i) * M + m], s, 1e-5 * (std::sqrt(double(K)) + std::abs(s))) << where << " at " << i
                                                                                            << "," << m;
    }
  EXPECT_EQ(out.back(), 12345.0f) << where;
}

}  // namespace

// Both ISAs (vdpbf16ps where the CPU has AVX512_BF16, fp32 FMAs over the same bf16 values otherwise), row counts
// on both sides of each register block, odd K (a half-empty last pair), partial panels, threaded shapes.
TEST(PanelGemmBf16, MatchesReferenceOverRoundedOperands) {
  for (const std::string isa : {"avx2", ""}) {
    for (const int N : {1, 2, 3, 7, 8, 9, 16, 17, 70}) {
      check_bf16(N, 37, 45, true, true, isa);
      check_bf16(N, 16, 32, false, false, isa);
    }
    for (const int M : {1, 15, 17, 31, 33, 100}) check_bf16(5, 25, M, M % 2 == 0, M % 3 == 0, isa);
    check_bf16(16, 128, 1000, false, false, isa);
    check_bf16(3, 513, 389, true, true, isa);
    check_bf16(130, 256, 700, true, true, isa);  // threaded over three row blocks
  }
  if (!__builtin_cpu_supports("avx512bf16"))
    std::printf("note: this CPU has no AVX512_BF16; only the widening path was tested\n");
}

// bf16 is a different answer, not a broken one: against the exact fp32 product its error stays at bf16's ~3
// significant digits.
TEST(PanelGemmBf16, StaysCloseToTheFp32Product) {
  const int N = 4, K = 256, M = 96;
  const auto x = randn(size_t(N) * K, 21), w = randn(size_t(K) * M, 22);
  std::vector<uint32_t> packed(ds::cpu::panel_packed_bf16_words(K, M));
  ds::cpu::pack_panels_bf16(packed.data(), w.data(), K, M, true);
  std::vector<float> out(size_t(N) * M);
  ds::cpu::panel_gemm_bf16(out.data(), x.data(), packed.data(), nullptr, N, K, M);
  double worst = 0;
  for (int i = 0; i < N; ++i)
    for (int m = 0; m < M; ++m) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += double(x[size_t(i) * K + k]) * w[size_t(k) * M + m];
      worst = std::max(worst, std::abs(out[size_t(i) * M + m] - s) / std::sqrt(double(K)));
    }
  EXPECT_LT(worst, 2e-2);   // bf16 rounding: about 2^-9 relative per operand
  EXPECT_GT(worst, 1e-5);   // and not the fp32 kernel by mistake
}
