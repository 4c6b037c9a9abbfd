// Private SIMD helpers shared by the CPU kernels (not part of the kernels.h API): horizontal reductions, tail
// masks, a vectorised exp, and the AVX-512 twins that the hottest kernels pick at run time.
// The library is compiled for AVX2/FMA/F16C; AVX-512 code is compiled per function with
// __attribute__((target("avx512f"))) and called only when the CPU has it, so one binary runs on Zen 3 and uses
// AVX-512 on Zen 4/5. DS_CPU_ISA=avx2 forces the AVX2 paths (read on every call, so tests can cover both).
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace ds::cpu::simd {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Lanes [0, count) set; count may be <= 0 (none) or >= 8 (all).
inline __m256i tail_mask(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// exp(x) with x clamped to [lo, 88] so that results stay normal floats (lo >= -87.3). Cephes expf polynomial on
// the range-reduced argument, ~1 ulp; about 15 vector ops for 8 lanes (libm expf is ~10x slower per element).
inline __m256 exp256(__m256 x, float lo = -87.3f) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// The row dispatch of the register-blocked kernels: kernel(std::integral_constant<int, R>{}, r0) for rows
// [r0, r0 + R), in blocks of Max rows and then one block of the remainder, so each R is a compile-time count.
template <int R, class Kernel>
inline void row_remainder(int n, int r0, Kernel& kernel) {
  if constexpr (R > 0) {
    if (n == R) kernel(std::integral_constant<int, R>{}, r0);
    else row_remainder<R - 1>(n, r0, kernel);
  }
}
template <int Max, class Kernel>
inline void for_row_blocks(int rows, Kernel&& kernel) {
  int r = 0;
  for (; r + Max <= rows; r += Max) kernel(std::integral_constant<int, Max>{}, r);
  row_remainder<Max - 1>(rows - r, r, kernel);
}

// Prefetches one row of the next column panel (128 bytes: 32 fp32 or 32 pairs of bf16) while a panel GEMM computes
// with the current one. The next panel is a panel's length ahead, so its reads overlap the current panel's FMAs
// instead of following them. Past the last panel the address points at nothing, which a prefetch tolerates (it
// never faults); it is computed as an integer, not as a pointer beyond the array. On the head of gpt2-tiny this
// took 16 rows from 0.67-0.83 to 0.47-0.56 ms (bm_kernels --only panel, 2 threads, 3 runs).
inline void prefetch_panel_row(uintptr_t address) {
  _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(address + 64), _MM_HINT_T0);
}

// The task grid of the panel GEMMs (panel_gemm, panel_gemm_bf16): rows in blocks of 64, so that a block's
// activations stay in L1/L2 while every panel passes over it, times panels of `width` columns; in parallel only
// when the product has at least 2^19 multiply-adds (a decode of a small model is a few microseconds of work, and
// waking the team would cost more than it saves). task(r0, rows, p, m0, cols) computes that tile. Tiles are
// handed out in runs of about an eighth of a thread's share, not split up front: when another process or a server
// thread preempts one of the team, the others take over its tiles instead of waiting at the barrier (with 16
// streaming clients on 2 cores, bench serve's forward time per request went from 3.64 to 3.16 ms, medians in
// docs/performance.md).
template <class Task>
inline void for_panel_tiles(int N, int K, int M, int width, Task&& task) {
  constexpr int kRowBlock = 64;
  const int P = (M + width - 1) / width;
  const int RB = (N + kRowBlock - 1) / kRowBlock;
  const bool parallel = int64_t(N) * K * M >= (int64_t{1} << 19) && P > 1;
  auto tile = [&](int rb, int p) {
    const int r0 = rb * kRowBlock, m0 = p * width;
    task(r0, std::min(kRowBlock, N - r0), p, m0, std::min(width, M - m0));
  };
  if (!parallel) {  // a plain loop: even an inactive dynamic schedule costs a few percent of a tiny product
    for (int rb = 0; rb < RB; ++rb)
      for (int p = 0; p < P; ++p) tile(rb, p);
    return;
  }
  const int chunk = std::max(1, RB * P / (8 * omp_get_max_threads()));
#pragma omp parallel for collapse(2) schedule(dynamic, chunk)
  for (int rb = 0; rb < RB; ++rb)
    for (int p = 0; p < P; ++p) tile(rb, p);
}

// True when the AVX-512 paths should run: the CPU has AVX-512F and DS_CPU_ISA is not "avx2".
inline bool use_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  const char* isa = std::getenv("DS_CPU_ISA");
  return has && !(isa && std::strcmp(isa, "avx2") == 0);
}

// ---- AVX-512 twins. GCC 12's own avx512fintrin.h trips -Wuninitialized in _mm512_undefined_* (GCC bug 105593,
// fixed in GCC 13); the warning is silenced for this block and wherever these are inlined (see DS_AVX512_BEGIN).
// Clang's headers are not affected (and Clang knows no -Wmaybe-uninitialized), so there the markers are empty.
#define DS_TARGET_AVX512 __attribute__((target("avx512f")))
#if defined(__GNUC__) && !defined(__clang__)
#define DS_AVX512_BEGIN                                   \
  _Pragma("GCC diagnostic push")                          \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")   \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define DS_AVX512_END _Pragma("GCC diagnostic pop")
#else
#define DS_AVX512_BEGIN
#define DS_AVX512_END
#endif

DS_AVX512_BEGIN

DS_TARGET_AVX512 inline __mmask16 mask16(int count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
}

// Same polynomial and clamping as exp256, 16 lanes; 2^n applied with vscalefps.
DS_TARGET_AVX512 inline __m512 exp512(__m512 x, float lo = -87.3f) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(lo)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// row[0..len) = softmax(row[0..len)), row[len..T) = 0 (a causal row of attention scores).
DS_TARGET_AVX512 inline void softmax_causal_row512(float* row, int len, int T) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < len; j += 16) {
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, mask16(len - j), row + j));
  }
  const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 acc = _mm512_setzero_ps();
  for (int j = 0; j < len; j += 16) {
    const __mmask16 m = mask16(len - j);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), vm));
    _mm512_mask_storeu_ps(row + j, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(acc));
  for (int j = 0; j < len; j += 16) {
    const __mmask16 m = mask16(len - j);
    _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inv));
  }
  std::fill(row + len, row + T, 0.0f);
}

DS_AVX512_END

}  // namespace ds::cpu::simd
