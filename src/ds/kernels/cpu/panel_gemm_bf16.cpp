// The inference GEMMs with bf16 weights (dspeed serve --weights bf16): the column panels of panel_gemm.cpp, each
// [ceil(K/2)][32] 32-bit words, a word holding the bf16 weights of rows k = 2kk (low half) and 2kk + 1 (high half)
// of one column. The activations are rounded to bf16 once per call and paired the same way, so one AVX512_BF16
// vdpbf16ps adds two products per lane into fp32 accumulators: twice the multiply rate of fp32 FMAs and half the
// weight bytes. CPUs without AVX512_BF16 widen the same bf16 values to fp32 and use FMAs (AVX2), so every path
// computes the same products of bf16-rounded operands (exact in fp32) and differs only in summation order and in
// subnormals (vdpbf16ps flushes them to zero). The widening path halves the weight bytes but not the multiplies:
// on such CPUs bf16 helps passes bound by reading weights (a few rows), not those bound by the multiplies.
// Napkin (Zen 5, 2 threads): the head of gpt2-tiny for 16 rows is 206 MFLOP, bound by the multiplies in fp32
// (bm_kernels --only panel prints both formats side by side); one row is bound by reading the panels: 12.9 MB
// instead of 25.7.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

constexpr int kPanel = kPanelWidth;

int panels_of(int M) { return (M + kPanel - 1) / kPanel; }
int pairs_of(int K) { return (K + 1) / 2; }

bool use_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has && simd::use_avx512();  // DS_CPU_ISA=avx2 forces the widening path
}

// x[N, K] rounded to bf16 as [N][pairs] words (the last pair of an odd K has a zero high half). On a
// little-endian machine the bf16 values of a row in order, copied as bytes, are its pairs.
static_assert(std::endian::native == std::endian::little, "the bf16 pairs assume a little-endian machine");
void pair_rows(std::vector<uint32_t>& xp, std::vector<uint16_t>& halves, const float* x, int N, int K) {
  const int P2 = pairs_of(K);
  xp.resize(static_cast<size_t>(N) * P2);
  if (K % 2 == 0) {  // one conversion of all rows
    halves.resize(static_cast<size_t>(N) * K);
    f32_to_bf16(halves.data(), x, halves.size());
    std::memcpy(xp.data(), halves.data(), sizeof(uint16_t) * halves.size());
    return;
  }
  halves.assign(static_cast<size_t>(2 * P2), 0);
  for (int r = 0; r < N; ++r) {
    f32_to_bf16(halves.data(), x + static_cast<int64_t>(r) * K, static_cast<size_t>(K));
    std::memcpy(xp.data() + static_cast<int64_t>(r) * P2, halves.data(), sizeof(uint32_t) * static_cast<size_t>(P2));
  }
}

// Widening path (AVX2): up to 2 rows at a time, 4 vectors of 8 columns.
template <int R>
void bf16_rows_avx2(float* out, int ldo, const uint32_t* xp, int ldx, const uint32_t* panel, const float* bias,
                    int P2, int cols) {
  __m256 acc[R][4];
  for (int j = 0; j < 4; ++j) {
    const __m256i m = simd::tail_mask(cols - 8 * j);
    const __m256 b = bias ? _mm256_maskload_ps(bias + 8 * j, m) : _mm256_setzero_ps();
    for (int r = 0; r < R; ++r) acc[r][j] = b;
  }
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const uintptr_t next = reinterpret_cast<uintptr_t>(panel + static_cast<int64_t>(P2) * kPanel);
  for (int kk = 0; kk < P2; ++kk) {
    simd::prefetch_panel_row(next + static_cast<uintptr_t>(kk) * kPanel * sizeof(uint32_t));
    __m256 xe[R], xo[R];
    for (int r = 0; r < R; ++r) {
      const uint32_t w = xp[static_cast<int64_t>(r) * ldx + kk];
      xe[r] = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(w << 16)));
      xo[r] = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(w & 0xFFFF0000u)));
    }
    const uint32_t* wrow = panel + static_cast<int64_t>(kk) * kPanel;
    for (int j = 0; j < 4; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + 8 * j));
      const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(w, high));
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_ps(odd, xo[r], _mm256_fmadd_ps(even, xe[r], acc[r][j]));
    }
  }
  for (int j = 0; j < 4; ++j) {
    const __m256i m = simd::tail_mask(cols - 8 * j);
    for (int r = 0; r < R; ++r) _mm256_maskstore_ps(out + static_cast<int64_t>(r) * ldo + 8 * j, m, acc[r][j]);
  }
}

void bf16_block_avx2(float* out, int ldo, const uint32_t* xp, int ldx, const uint32_t* panel, const float* bias,
                     int P2, int rows, int cols) {
  simd::for_row_blocks<2>(rows, [&](auto R, int r) {
    bf16_rows_avx2<R()>(out + int64_t(r) * ldo, ldo, xp + int64_t(r) * ldx, ldx, panel, bias, P2, cols);
  });
}

DS_AVX512_BEGIN
#define DS_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))

// AVX512_BF16: two vectors of 16 columns per panel row, up to 8 rows at a time.
template <int R>
DS_TARGET_AVX512_BF16 void bf16_rows_avx512(float* out, int ldo, const uint32_t* xp, int ldx, const uint32_t* panel,
                                            const float* bias, int P2, int cols) {
  const __mmask16 m0 = simd::mask16(cols), m1 = simd::mask16(cols - 16);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = b0;
    a1[r] = b1;
  }
  const uintptr_t next = reinterpret_cast<uintptr_t>(panel + static_cast<int64_t>(P2) * kPanel);
  for (int kk = 0; kk < P2; ++kk) {
    const uint32_t* w = panel + static_cast<int64_t>(kk) * kPanel;
    simd::prefetch_panel_row(next + static_cast<uintptr_t>(kk) * kPanel * sizeof(uint32_t));
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w), w1 = (__m512bh)_mm512_loadu_si512(w + 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[static_cast<int64_t>(r) * ldx + kk]));
      a0[r] = _mm512_dpbf16_ps(a0[r], w0, xb);
      a1[r] = _mm512_dpbf16_ps(a1[r], w1, xb);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(out + static_cast<int64_t>(r) * ldo, m0, a0[r]);
    _mm512_mask_storeu_ps(out + static_cast<int64_t>(r) * ldo + 16, m1, a1[r]);
  }
}

DS_TARGET_AVX512_BF16 void bf16_block_avx512(float* out, int ldo, const uint32_t* xp, int ldx,
                                             const uint32_t* panel, const float* bias, int P2, int rows, int cols) {
  simd::for_row_blocks<8>(rows, [&](auto R, int r) {
    bf16_rows_avx512<R()>(out + int64_t(r) * ldo, ldo, xp + int64_t(r) * ldx, ldx, panel, bias, P2, cols);
  });
}
DS_AVX512_END

}  // namespace

size_t panel_packed_bf16_words(int K, int M) {
  return static_cast<size_t>(pairs_of(K)) * static_cast<size_t>(panels_of(M)) * kPanel;
}

void pack_panels_bf16(uint32_t* packed, const float* w, int K, int M, bool w_is_rows_of_k) {
  DS_CHECK(K > 0 && M > 0, "[kernels] pack_panels_bf16: K = {} and M = {} must be positive", K, M);
  const int P = panels_of(M), P2 = pairs_of(K);
#pragma omp parallel for schedule(static) if (int64_t(K) * M >= (int64_t{1} << 20))
  for (int p = 0; p < P; ++p) {
    const int m0 = p * kPanel, cols = std::min(kPanel, M - m0);
    uint32_t* dst = packed + static_cast<int64_t>(p) * P2 * kPanel;
    for (int kk = 0; kk < P2; ++kk) {
      float v[2 * kPanel] = {};  // [half][column]: rows 2kk and 2kk + 1, zero past K and past M
      for (int h = 0; h < 2 && 2 * kk + h < K; ++h) {
        const int k = 2 * kk + h;
        for (int j = 0; j < cols; ++j)
          v[h * kPanel + j] = w_is_rows_of_k ? w[static_cast<int64_t>(k) * M + m0 + j]
                                             : w[static_cast<int64_t>(m0 + j) * K + k];
      }
      uint16_t b[2 * kPanel];
      f32_to_bf16(b, v, 2 * kPanel);
      for (int j = 0; j < kPanel; ++j)
        dst[static_cast<int64_t>(kk) * kPanel + j] = uint32_t(b[j]) | (uint32_t(b[kPanel + j]) << 16);
    }
  }
}

float panel_bf16_at(const uint32_t* packed, int K, int k, int m) {
  const uint32_t word = packed[(static_cast<int64_t>(m / kPanel) * pairs_of(K) + k / 2) * kPanel + m % kPanel];
  const uint32_t bits = (k % 2 == 0) ? word << 16 : word & 0xFFFF0000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void panel_gemm_bf16(float* out, const float* x, const uint32_t* packed, const float* bias, int N, int K, int M) {
  if (N <= 0) return;
  const int P2 = pairs_of(K);
  thread_local std::vector<uint32_t> xp;  // the calling thread's; the team only reads it
  thread_local std::vector<uint16_t> halves;
  pair_rows(xp, halves, x, N, K);
  const uint32_t* xw = xp.data();
  const bool avx512 = use_avx512_bf16();
  simd::for_panel_tiles(N, K, M, kPanel, [&](int r0, int rows, int p, int m0, int cols) {
    const uint32_t* panel = packed + static_cast<int64_t>(p) * P2 * kPanel;
    const float* b = bias ? bias + m0 : nullptr;
    float* o = out + static_cast<int64_t>(r0) * M + m0;
    const uint32_t* xr = xw + static_cast<int64_t>(r0) * P2;
    if (avx512) bf16_block_avx512(o, M, xr, P2, panel, b, P2, rows, cols);
    else bf16_block_avx2(o, M, xr, P2, panel, b, P2, rows, cols);
  });
}

}  // namespace ds::cpu
