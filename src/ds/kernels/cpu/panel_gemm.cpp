// Products of a few activation rows with a weight matrix packed in column panels (the inference forward's GEMMs
// and head; see kernels.h). A panel is 32 output columns over all K inputs, [K][32] contiguous, so a task streams
// one panel once and keeps a block of rows' 32 outputs in registers: per input k it loads the panel's two
// 16-float vectors and broadcasts each row's x[k] into two FMAs. There is no horizontal sum and no packing per
// call, which is what sgemm spends a decode pass on.
// Napkin (Zen 5, 2 threads): 8 rows x 32 columns = 16 accumulators, 16 FMAs per 10 loads, so the loop is FMA-bound
// near peak; one row is bound by reading the panels (the head of gpt2-tiny: 25.7 MB).
#include <omp.h>

#include <algorithm>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

constexpr int kPanel = kPanelWidth;

int panels_of(int M) { return (M + kPanel - 1) / kPanel; }

// AVX2: four 8-float vectors per panel row, up to 3 rows at a time (12 accumulators of 16 registers).
template <int R>
void panel_rows_avx2(float* out, int ldo, const float* x, int ldx, const float* panel, const float* bias, int K,
                     int cols) {
  __m256 acc[R][4];
  for (int j = 0; j < 4; ++j) {
    const __m256i m = simd::tail_mask(cols - 8 * j);
    const __m256 b = bias ? _mm256_maskload_ps(bias + 8 * j, m) : _mm256_setzero_ps();
    for (int r = 0; r < R; ++r) acc[r][j] = b;
  }
  const uintptr_t next = reinterpret_cast<uintptr_t>(panel + static_cast<int64_t>(K) * kPanel);
  for (int k = 0; k < K; ++k) {
    const float* w = panel + static_cast<int64_t>(k) * kPanel;
    simd::prefetch_panel_row(next + static_cast<uintptr_t>(k) * kPanel * sizeof(float));
    const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8), w2 = _mm256_loadu_ps(w + 16),
                 w3 = _mm256_loadu_ps(w + 24);
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + static_cast<int64_t>(r) * ldx + k);
      acc[r][0] = _mm256_fmadd_ps(w0, xb, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(w1, xb, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(w2, xb, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(w3, xb, acc[r][3]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const __m256i m = simd::tail_mask(cols - 8 * j);
    for (int r = 0; r < R; ++r) _mm256_maskstore_ps(out + static_cast<int64_t>(r) * ldo + 8 * j, m, acc[r][j]);
  }
}

void panel_block_avx2(float* out, int ldo, const float* x, int ldx, const float* panel, const float* bias, int K,
                      int rows, int cols) {
  simd::for_row_blocks<3>(rows, [&](auto R, int r) {
    panel_rows_avx2<R()>(out + int64_t(r) * ldo, ldo, x + int64_t(r) * ldx, ldx, panel, bias, K, cols);
  });
}

DS_AVX512_BEGIN
// AVX-512: two 16-float vectors per panel row, up to 8 rows at a time.
template <int R>
DS_TARGET_AVX512 void panel_rows_avx512(float* out, int ldo, const float* x, int ldx, const float* panel,
                                        const float* bias, int K, int cols) {
  const __mmask16 m0 = simd::mask16(cols), m1 = simd::mask16(cols - 16);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = b0;
    a1[r] = b1;
  }
  const uintptr_t next = reinterpret_cast<uintptr_t>(panel + static_cast<int64_t>(K) * kPanel);
  for (int k = 0; k < K; ++k) {
    const float* w = panel + static_cast<int64_t>(k) * kPanel;
    simd::prefetch_panel_row(next + static_cast<uintptr_t>(k) * kPanel * sizeof(float));
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[static_cast<int64_t>(r) * ldx + k]);
      a0[r] = _mm512_fmadd_ps(w0, xb, a0[r]);
      a1[r] = _mm512_fmadd_ps(w1, xb, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(out + static_cast<int64_t>(r) * ldo, m0, a0[r]);
    _mm512_mask_storeu_ps(out + static_cast<int64_t>(r) * ldo + 16, m1, a1[r]);
  }
}

DS_TARGET_AVX512 void panel_block_avx512(float* out, int ldo, const float* x, int ldx, const float* panel,
                                         const float* bias, int K, int rows, int cols) {
  simd::for_row_blocks<8>(rows, [&](auto R, int r) {
    panel_rows_avx512<R()>(out + int64_t(r) * ldo, ldo, x + int64_t(r) * ldx, ldx, panel, bias, K, cols);
  });
}
DS_AVX512_END

}  // namespace

size_t panel_packed_floats(int K, int M) { return static_cast<size_t>(K) * static_cast<size_t>(panels_of(M)) * kPanel; }

void pack_panels(float* packed, const float* w, int K, int M, bool w_is_rows_of_k) {
  DS_CHECK(K > 0 && M > 0, "[kernels] pack_panels: K = {} and M = {} must be positive", K, M);
  const int P = panels_of(M);
#pragma omp parallel for schedule(static) if (int64_t(K) * M >= (int64_t{1} << 20))
  for (int p = 0; p < P; ++p) {
    float* dst = packed + static_cast<int64_t>(p) * K * kPanel;
    const int m0 = p * kPanel, cols = std::min(kPanel, M - m0);
    for (int k = 0; k < K; ++k) {
      float* d = dst + static_cast<int64_t>(k) * kPanel;
      for (int j = 0; j < cols; ++j)
        d[j] = w_is_rows_of_k ? w[static_cast<int64_t>(k) * M + m0 + j] : w[static_cast<int64_t>(m0 + j) * K + k];
      std::fill(d + cols, d + kPanel, 0.0f);
    }
  }
}

void unpack_panels(float* w, const float* packed, int K, int M, bool w_is_rows_of_k) {
  DS_CHECK(K > 0 && M > 0, "[kernels] unpack_panels: K = {} and M = {} must be positive", K, M);
  for (int m = 0; m < M; ++m) {
    const float* src = packed + static_cast<int64_t>(m / kPanel) * K * kPanel + m % kPanel;
    for (int k = 0; k < K; ++k) {
      const float v = src[static_cast<int64_t>(k) * kPanel];
      if (w_is_rows_of_k) w[static_cast<int64_t>(k) * M + m] = v;
      else w[static_cast<int64_t>(m) * K + k] = v;
    }
  }
}

void panel_gemm(float* out, const float* x, const float* packed, const float* bias, int N, int K, int M) {
  if (N <= 0) return;
  const bool avx512 = simd::use_avx512();
  simd::for_panel_tiles(N, K, M, kPanel, [&](int r0, int rows, int p, int m0, int cols) {
    const float* panel = packed + static_cast<int64_t>(p) * K * kPanel;
    const float* b = bias ? bias + m0 : nullptr;
    float* o = out + static_cast<int64_t>(r0) * M + m0;
    const float* xr = x + static_cast<int64_t>(r0) * K;
    if (avx512) panel_block_avx512(o, M, xr, K, panel, b, K, rows, cols);
    else panel_block_avx2(o, M, xr, K, panel, b, K, rows, cols);
  });
}

}  // namespace ds::cpu
