// Causal multi-head self-attention, forward and backward, on our own register-tiled kernels (AVX-512 when the
// CPU has it, AVX2 otherwise), parallel over (b, h), no BLAS inside the OpenMP region. Only the causal triangle
// is computed; each head's operands are packed once and the softmax runs on a row tile while it is in L1.
// Per-(b,h) cblas_sgemm on the full T x T loses (bm_kernels --explore; ms fwd/bwd, 1 thread | 2 threads):
//   B4 T256 C768 NH12: AVX-512 2.8/5.2 | 1.5/2.4, AVX2 4.6/8.6 | 2.3/4.1, sgemm 12.7/16.8 | 10.5/13.4
//   B8 T128 C128 NH4:  AVX-512 0.28/0.39 | 0.18/0.22, AVX2 0.47/0.65 | 0.25/0.37, sgemm 1.5/1.3 | 1.9/2.5
// (PyTorch 1.13's q@k^T, mask, softmax, @v on this machine: 11-16/15-19 and 1.5-2.2/1.8-3.0 ms.)
// Napkin: 2*T^2*HS flops per head forward (half the full T x T), twice that backward: 0.4 + 0.8 GFLOP a layer
// at B4 T256 C768, att stash 12.6 MB. Bound: the FMA rate; AVX-512 reaches ~1.1x the (AVX2) sgemm reference.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

using simd::tail_mask;

constexpr int kMR = 6;         // rows of an AVX2 register tile (12 ymm accumulators)
constexpr int kNR = 16;        // columns of an AVX2 register tile (two ymm)
constexpr int kMR512 = 8;      // rows of an AVX-512 register tile (16 zmm accumulators, columns 32)
constexpr int kMaxSlots = 32;  // per-thread scratch slots of attention_backward (caps its thread count)

// ---- register tiles: C[r][0..nc) = alpha * sum_{k in [k0,k1)} a(r,k) * B[k*ldb + 0..nc)
// with a(r,k) = A[r*lda + k] (kTransA false) or A[k*lda + r] (kTransA true).

template <int MR, bool kTransA, bool kMasked>
inline void tile256(const float* A, size_t lda, const float* Bm, size_t ldb, float* Cm, size_t ldc, int k0, int k1,
                    float alpha, int nc) {
  __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
  if constexpr (kMasked) {
    m0 = tail_mask(nc);
    m1 = tail_mask(nc - 8);
  }
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int k = k0; k < k1; ++k) {
    const float* b = Bm + size_t(k) * ldb;
    __m256 b0, b1;
    if constexpr (kMasked) {
      b0 = _mm256_maskload_ps(b, m0);
      b1 = _mm256_maskload_ps(b + 8, m1);
    } else {
      b0 = _mm256_loadu_ps(b);
      b1 = _mm256_loadu_ps(b + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(kTransA ? A + size_t(k) * lda + r : A + size_t(r) * lda + k);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = Cm + size_t(r) * ldc;
    if constexpr (kMasked) {
      _mm256_maskstore_ps(c, m0, _mm256_mul_ps(c0[r], va));
      _mm256_maskstore_ps(c + 8, m1, _mm256_mul_ps(c1[r], va));
    } else {
      _mm256_storeu_ps(c, _mm256_mul_ps(c0[r], va));
      _mm256_storeu_ps(c + 8, _mm256_mul_ps(c1[r], va));
    }
  }
}

template <bool kTransA, bool kMasked>
inline void tile256_rows(int mr, const float* A, size_t lda, const float* Bm, size_t ldb, float* Cm, size_t ldc,
                         int k0, int k1, float alpha, int nc) {
  switch (mr) {
    case 6: tile256<6, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
    case 5: tile256<5, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
    case 4: tile256<4, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
    case 3: tile256<3, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
    case 2: tile256<2, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
    default: tile256<1, kTransA, kMasked>(A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha, nc); break;
  }
}

// C[0..mr)[0..ncols) for mr <= kMR, in column tiles of kNR.
template <bool kTransA>
void gemm_block_avx2(int mr, int ncols, const float* A, size_t lda, const float* Bm, size_t ldb, float* Cm,
                     size_t ldc, int k0, int k1, float alpha) {
  int j = 0;
  for (; j + kNR <= ncols; j += kNR) {
    tile256_rows<kTransA, false>(mr, A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, kNR);
  }
  if (j < ncols) tile256_rows<kTransA, true>(mr, A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, ncols - j);
}

DS_AVX512_BEGIN

template <int MR, bool kTransA>
DS_TARGET_AVX512 inline void tile512(const float* A, size_t lda, const float* Bm, size_t ldb, float* Cm, size_t ldc,
                                     int k0, int k1, float alpha, int nc) {
  const __mmask16 m0 = simd::mask16(nc), m1 = simd::mask16(nc - 16);
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int k = k0; k < k1; ++k) {
    const float* b = Bm + size_t(k) * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(kTransA ? A[size_t(k) * lda + r] : A[size_t(r) * lda + k]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(Cm + size_t(r) * ldc, m0, _mm512_mul_ps(c0[r], va));
    _mm512_mask_storeu_ps(Cm + size_t(r) * ldc + 16, m1, _mm512_mul_ps(c1[r], va));
  }
}

// C[0..mr)[0..ncols) for mr <= kMR512, in column tiles of 32 (the last one masked).
template <bool kTransA>
DS_TARGET_AVX512 void gemm_block_avx512(int mr, int ncols, const float* A, size_t lda, const float* Bm, size_t ldb,
                                        float* Cm, size_t ldc, int k0, int k1, float alpha) {
  for (int j = 0; j < ncols; j += 32) {
    const int nc = std::min(32, ncols - j);
    switch (mr) {
      case 8: tile512<8, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 7: tile512<7, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 6: tile512<6, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 5: tile512<5, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 4: tile512<4, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 3: tile512<3, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      case 2: tile512<2, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
      default: tile512<1, kTransA>(A, lda, Bm + j, ldb, Cm + j, ldc, k0, k1, alpha, nc); break;
    }
  }
}

// g[0..len) = scale * a * (g - sum(a * g)): softmax backward on the causal part of a row.
DS_TARGET_AVX512 void softmax_backward_row_avx512(float* g, const float* a, int len, float scale) {
  __m512 acc = _mm512_setzero_ps();
  for (int j = 0; j < len; j += 16) {
    const __mmask16 m = simd::mask16(len - j);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, g + j), acc);
  }
  const __m512 s = _mm512_set1_ps(_mm512_reduce_add_ps(acc)), sc = _mm512_set1_ps(scale);
  for (int j = 0; j < len; j += 16) {
    const __mmask16 m = simd::mask16(len - j);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_sub_ps(_mm512_maskz_loadu_ps(m, g + j), s));
    _mm512_mask_storeu_ps(g + j, m, _mm512_mul_ps(t, sc));
  }
}

DS_AVX512_END

// row[0..len) = softmax(row[0..len)), row[len..T) = 0.
void softmax_causal_row_avx2(float* row, int len, int T) {
  const int l8 = len & ~7, rem = len - l8;
  const __m256i mask = tail_mask(rem);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int j = 0; j < l8; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  float mx = simd::hmax(vmax);
  for (int j = l8; j < len; ++j) mx = std::max(mx, row[j]);
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (int j = 0; j < l8; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    _mm256_storeu_ps(row + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  __m256 etail = _mm256_setzero_ps();
  if (rem) {
    etail = _mm256_and_ps(simd::exp256(_mm256_sub_ps(_mm256_maskload_ps(row + l8, mask), vm)),
                          _mm256_castsi256_ps(mask));
    acc = _mm256_add_ps(acc, etail);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / simd::hsum(acc));
  for (int j = 0; j < l8; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
  if (rem) _mm256_maskstore_ps(row + l8, mask, _mm256_mul_ps(etail, inv));
  std::fill(row + len, row + T, 0.0f);
}

// g[0..len) = scale * a * (g - sum(a * g)): softmax backward on the causal part of a row.
void softmax_backward_row_avx2(float* g, const float* a, int len, float scale) {
  const int l8 = len & ~7, rem = len - l8;
  const __m256i mask = tail_mask(rem);
  __m256 acc = _mm256_setzero_ps();
  for (int j = 0; j < l8; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(g + j), acc);
  if (rem) acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + l8, mask), _mm256_maskload_ps(g + l8, mask), acc);
  const __m256 s = _mm256_set1_ps(simd::hsum(acc)), sc = _mm256_set1_ps(scale);
  for (int j = 0; j < l8; j += 8) {
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(a + j), _mm256_sub_ps(_mm256_loadu_ps(g + j), s));
    _mm256_storeu_ps(g + j, _mm256_mul_ps(t, sc));
  }
  if (rem) {
    const __m256 ga = _mm256_maskload_ps(g + l8, mask);
    const __m256 t = _mm256_mul_ps(_mm256_maskload_ps(a + l8, mask), _mm256_sub_ps(ga, s));
    _mm256_maskstore_ps(g + l8, mask, _mm256_mul_ps(t, sc));
  }
}

// The ISA-specific pieces behind one name; kWide selects AVX-512.
template <bool kWide>
struct Isa {
  static constexpr int kRows = kWide ? kMR512 : kMR;
  template <bool kTransA>
  static void gemm(int mr, int ncols, const float* A, size_t lda, const float* Bm, size_t ldb, float* Cm,
                   size_t ldc, int k0, int k1, float alpha) {
    if constexpr (kWide) {
      gemm_block_avx512<kTransA>(mr, ncols, A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha);
    } else {
      gemm_block_avx2<kTransA>(mr, ncols, A, lda, Bm, ldb, Cm, ldc, k0, k1, alpha);
    }
  }
  static void softmax_row(float* row, int len, int T) {
    if constexpr (kWide) {
      simd::softmax_causal_row512(row, len, T);
    } else {
      softmax_causal_row_avx2(row, len, T);
    }
  }
  static void softmax_backward_row(float* g, const float* a, int len, float scale) {
    if constexpr (kWide) {
      softmax_backward_row_avx512(g, a, len, scale);
    } else {
      softmax_backward_row_avx2(g, a, len, scale);
    }
  }
};

// ---- packing

inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// dst[d*T + t] = src[t*ld + d], in 8x8 register blocks (a scalar scatter with stride T thrashes L1 sets: it
// was 30% of the forward).
void pack_transposed(float* dst, const float* src, size_t ld, int T, int HS) {
  const int T8 = T & ~7, H8 = HS & ~7;
  for (int t0 = 0; t0 < T8; t0 += 8) {
    for (int d0 = 0; d0 < H8; d0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + size_t(t0 + i) * ld + d0);
      transpose8x8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + size_t(d0 + i) * T + t0, r[i]);
    }
    for (int d = H8; d < HS; ++d)
      for (int i = 0; i < 8; ++i) dst[size_t(d) * T + t0 + i] = src[size_t(t0 + i) * ld + d];
  }
  for (int d = 0; d < HS; ++d)
    for (int t = T8; t < T; ++t) dst[size_t(d) * T + t] = src[size_t(t) * ld + d];
}

// dst[t*HS + d] = src[t*ld + d]: a head's rows made contiguous (the strided rows sit on a new page each).
void pack_rows(float* dst, const float* src, size_t ld, int T, int HS) {
  for (int t = 0; t < T; ++t) std::memcpy(dst + size_t(t) * HS, src + size_t(t) * ld, sizeof(float) * size_t(HS));
}

// Scratch of one attention_backward slot: dpreatt (T x T), then v^T, q, k and dout packed (T x HS each).
size_t slot_floats(int T, int HS) { return size_t(T) * T + size_t(4) * T * HS; }

// Per-thread buffer for the forward's packed k^T and v (grown once, reused by every later call).
float* thread_buffer(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

struct Dims {
  int T, HS;
  size_t ld_qkv, ld_out;  // row strides of qkv (3C) and out/dout (C)
  float scale;
};

// One (b, h): att_h = softmax(scale * q k^T) on the causal triangle, out_h = att_h v. pack: 2 * T * HS floats.
template <bool kWide>
void head_forward(float* out_h, float* att_h, const float* q, const float* k, const float* v, float* pack,
                  const Dims& d) {
  using I = Isa<kWide>;
  const int T = d.T, HS = d.HS;
  float* kt = pack;
  float* vp = pack + size_t(HS) * T;
  pack_transposed(kt, k, d.ld_qkv, T, HS);
  pack_rows(vp, v, d.ld_qkv, T, HS);
  for (int i0 = 0; i0 < T; i0 += I::kRows) {
    const int mr = std::min(I::kRows, T - i0);
    const int kend = i0 + mr;  // keys [0, kend) cover every row of the tile; the softmax ignores the overhang
    I::template gemm<false>(mr, kend, q + size_t(i0) * d.ld_qkv, d.ld_qkv, kt, T, att_h + size_t(i0) * T, T, 0, HS,
                            d.scale);
    for (int r = 0; r < mr; ++r) I::softmax_row(att_h + size_t(i0 + r) * T, i0 + r + 1, T);
    I::template gemm<false>(mr, HS, att_h + size_t(i0) * T, T, vp, HS, out_h + size_t(i0) * d.ld_out, d.ld_out, 0,
                            kend, 1.0f);
  }
}

// One (b, h) backward into dq, dk, dv (rows of dqkv). slot: slot_floats(T, HS) floats.
template <bool kWide>
void head_backward(float* dq, float* dk, float* dv, const float* dout_h, const float* q_h, const float* k_h,
                   const float* v_h, const float* att_h, float* slot, const Dims& d) {
  using I = Isa<kWide>;
  const int T = d.T, HS = d.HS;
  const size_t th = size_t(T) * HS;
  float* dp = slot;
  float* vt = slot + size_t(T) * T;
  float* q = vt + th;
  float* k = q + th;
  float* g = k + th;
  pack_transposed(vt, v_h, d.ld_qkv, T, HS);
  pack_rows(q, q_h, d.ld_qkv, T, HS);
  pack_rows(k, k_h, d.ld_qkv, T, HS);
  pack_rows(g, dout_h, d.ld_out, T, HS);
  for (int i0 = 0; i0 < T; i0 += I::kRows) {
    const int mr = std::min(I::kRows, T - i0);
    const int kend = i0 + mr;
    // datt = dout v^T on the causal part of the tile's rows
    I::template gemm<false>(mr, kend, g + size_t(i0) * HS, HS, vt, T, dp + size_t(i0) * T, T, 0, HS, 1.0f);
    // dpreatt = scale * att * (datt - sum(att * datt)); zeros just past the diagonal, where the tiles below read
    for (int r = 0; r < mr; ++r) {
      const int len = i0 + r + 1;
      float* row = dp + size_t(i0 + r) * T;
      I::softmax_backward_row(row, att_h + size_t(i0 + r) * T, len, d.scale);
      std::fill(row + len, row + std::min(T, len + I::kRows), 0.0f);
    }
    // dq = dpreatt k
    I::template gemm<false>(mr, HS, dp + size_t(i0) * T, T, k, HS, dq + size_t(i0) * d.ld_qkv, d.ld_qkv, 0, kend,
                            1.0f);
  }
  // dk = dpreatt^T q and dv = att^T dout: row tile j0 of keys sums over queries t1 >= j0.
  for (int j0 = 0; j0 < T; j0 += I::kRows) {
    const int mr = std::min(I::kRows, T - j0);
    const size_t diag = size_t(j0) * T + j0;  // k = 0 of the tile is query row t1 = j0
    I::template gemm<true>(mr, HS, dp + diag, T, q + size_t(j0) * HS, HS, dk + size_t(j0) * d.ld_qkv, d.ld_qkv, 0,
                           T - j0, 1.0f);
    I::template gemm<true>(mr, HS, att_h + diag, T, g + size_t(j0) * HS, HS, dv + size_t(j0) * d.ld_qkv, d.ld_qkv,
                           0, T - j0, 1.0f);
  }
}

}  // namespace

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  DS_CHECK_AS(ShapeError, NH > 0 && C % NH == 0, "[kernels] attention: C={} is not a multiple of NH={}", C, NH);
  const int HS = C / NH;
  const Dims d{T, HS, size_t(3) * C, size_t(C), 1.0f / std::sqrt(float(HS))};
  const bool wide = simd::use_avx512();
#pragma omp parallel for schedule(dynamic)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const float* q = qkv + size_t(b) * T * d.ld_qkv + size_t(h) * HS;
    float* out_h = out + size_t(b) * T * C + size_t(h) * HS;
    float* att_h = att + size_t(bh) * T * T;
    float* pack = thread_buffer(size_t(2) * HS * T);
    if (wide) {
      head_forward<true>(out_h, att_h, q, q + C, q + 2 * C, pack, d);
    } else {
      head_forward<false>(out_h, att_h, q, q + C, q + 2 * C, pack, d);
    }
  }
}

size_t attention_backward_scratch_floats(int B, int T, int C, int NH) {
  return size_t(std::min(B * NH, kMaxSlots)) * slot_floats(T, C / NH);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, float* scratch,
                        int B, int T, int C, int NH) {
  DS_CHECK_AS(ShapeError, NH > 0 && C % NH == 0, "[kernels] attention: C={} is not a multiple of NH={}", C, NH);
  const int HS = C / NH;
  const Dims d{T, HS, size_t(3) * C, size_t(C), 1.0f / std::sqrt(float(HS))};
  const int slots = std::min(B * NH, kMaxSlots);
  const size_t per_slot = slot_floats(T, HS);
  const bool wide = simd::use_avx512();
  // One scratch slot per thread (so at most `slots` threads); each (b, h) writes only its own rows of dqkv.
#pragma omp parallel num_threads(std::min(omp_get_max_threads(), slots))
  {
    float* slot = scratch + size_t(omp_get_thread_num()) * per_slot;
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const size_t qoff = size_t(b) * T * d.ld_qkv + size_t(h) * HS;
      const float* q = qkv + qoff;
      float* dq = dqkv + qoff;
      const float* dout_h = dout + size_t(b) * T * C + size_t(h) * HS;
      const float* att_h = att + size_t(bh) * T * T;
      if (wide) {
        head_backward<true>(dq, dq + C, dq + 2 * C, dout_h, q, q + C, q + 2 * C, att_h, slot, d);
      } else {
        head_backward<false>(dq, dq + C, dq + 2 * C, dout_h, q, q + C, q + 2 * C, att_h, slot, d);
      }
    }
  }
}

}  // namespace ds::cpu
