// The 8-lane (AVX2 + F16C) conversions behind convert.h, for kernels that widen or round in registers as part of a
// larger pass (the mixed-precision Adam): the same instructions, so the same bits as the array conversions.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ds::lanes {

// Round to nearest even; a NaN stays a (quiet) NaN and never rounds to inf.
inline __m128i f32_to_bf16(__m256 x) {
  const __m256i b = _mm256_castps_si256(x);
  const __m256i hi = _mm256_srli_epi32(b, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  // Values are 0..0xFFFF, so the signed-saturating pack is exact.
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

inline __m256 bf16_to_f32(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }

inline __m128i f32_to_f16(__m256 x) { return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline __m256 f16_to_f32(__m128i h) { return _mm256_cvtph_ps(h); }

}  // namespace ds::lanes
