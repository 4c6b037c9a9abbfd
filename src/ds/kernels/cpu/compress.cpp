// 1-bit compression kernels (kernels.h): sign packing with one scale and error feedback, and the unpacking that
// the server side sums and the receiver restores from. The sign test is a compare and _mm256_movemask_ps, which
// gives exactly the byte of eight signs in element order (lane k -> bit k); unpacking broadcasts a byte, tests
// one bit per lane and blends +scale / -scale. The norm is cpu::sum_squares (double, fixed blocks), so the scale
// does not depend on the thread count.
// Napkin: compress reads x and error twice and writes both once (16 + 8 B per element, memory bound); decompress
// writes 4 B per element from 1/8 B.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

constexpr size_t kParallelMin = size_t{1} << 15;

// The +1/-1 of the eight elements of one byte, as lane masks.
inline __m256 lanes_set(uint8_t byte) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_set1_epi32(byte);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, bit), bit));
}

}  // namespace

namespace {

// One block: x += error, its scale, the signs and the new error.
float onebit_block(float* x, float* error, size_t n, uint8_t* bits) {
  const auto groups = n / 8;
  for (size_t g = 0; g < groups; ++g)
    _mm256_storeu_ps(x + g * 8, _mm256_add_ps(_mm256_loadu_ps(x + g * 8), _mm256_loadu_ps(error + g * 8)));
  const auto scale = static_cast<float>(std::sqrt(sum_squares(x, n) / static_cast<double>(n > 0 ? n : 1)));
  const __m256 zero = _mm256_setzero_ps(), pos = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-scale);
  for (size_t g = 0; g < groups; ++g) {
    const __m256 v = _mm256_loadu_ps(x + g * 8);
    const __m256 ge = _mm256_cmp_ps(v, zero, _CMP_GE_OQ);
    bits[g] = static_cast<uint8_t>(_mm256_movemask_ps(ge));
    _mm256_storeu_ps(error + g * 8, _mm256_sub_ps(v, _mm256_blendv_ps(neg, pos, ge)));
  }
  return scale;
}

}  // namespace

void onebit_compress(float* x, float* error, size_t n, size_t block, uint8_t* bits, float* scales) {
  const auto blocks = static_cast<int64_t>((n + block - 1) / block);
  if (blocks == 1) {  // one block: sum_squares and the passes split over the threads themselves
    scales[0] = onebit_block(x, error, n, bits);
    return;
  }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t begin = static_cast<size_t>(b) * block, len = std::min(block, n - begin);
    scales[b] = onebit_block(x + begin, error + begin, len, bits + begin / 8);
  }
}

void onebit_decompress(const uint8_t* bits, size_t n, size_t block, const float* scales, float scale_mul, float* out,
                       bool accumulate) {
  const auto groups = static_cast<int64_t>(n / 8);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t g = 0; g < groups; ++g) {
    const float scale = scale_mul * scales[static_cast<size_t>(g) * 8 / block];
    const __m256 v = _mm256_blendv_ps(_mm256_set1_ps(-scale), _mm256_set1_ps(scale), lanes_set(bits[g]));
    float* o = out + g * 8;
    _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), v) : v);
  }
}

// The compressed optimizers' passes: simple loops the auto-vectoriser turns into 8-wide code (GCC, -O3 -mavx2).
void momentum_update(float* m, const float* grad, size_t n, float beta1, float grad_scale) {
  const float a = (1.0f - beta1) * grad_scale;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) m[i] = beta1 * m[i] + a * grad[i];
}

void frozen_adam_apply(float* param, const float* m, const float* v, size_t n, float lr, float eps,
                       float weight_decay) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i)
    param[i] -= lr * (m[i] / (std::sqrt(std::max(v[i], m[i] * m[i])) + eps) + weight_decay * param[i]);
}

void local_steps_delta(float* delta, const float* param, const float* base, const float* v, size_t n, float eps) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) delta[i] = (param[i] - base[i]) * (std::sqrt(v[i]) + eps);
}

void local_steps_apply(float* param, float* m, const float* v, float* base, const float* avg, size_t n, float eps,
                       float lrs) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    m[i] = -avg[i] / lrs;
    param[i] = base[i] + avg[i] / (std::sqrt(v[i]) + eps);
    base[i] = param[i];
  }
}

// Block quantization: a max pass and a scale-and-round pass per block, blocks in parallel. The rounding pass is
// AVX2: 8 (8 bits) or 16 (4 bits) elements scaled, clamped, rounded half away from zero by a truncating
// conversion, narrowed to bytes with saturating packs (and, for 4 bits, the odd bytes shifted into high nibbles).
namespace {

// The levels of 8 elements as 32-bit lanes.
inline __m256i levels8(const float* x, __m256 inv, __m256 qmax) {
  const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(x), inv);
  const __m256 v = _mm256_max_ps(_mm256_min_ps(scaled, qmax), _mm256_sub_ps(_mm256_setzero_ps(), qmax));
  const __m256 half = _mm256_blendv_ps(_mm256_set1_ps(0.5f), _mm256_set1_ps(-0.5f),
                                       _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_cvttps_epi32(_mm256_add_ps(v, half));
}

// 16 elements' levels as 16 signed bytes, in element order.
inline __m128i levels16(const float* x, __m256 inv, __m256 qmax) {
  const __m256i a = levels8(x, inv, qmax), b = levels8(x + 8, inv, qmax);
  const __m128i a16 = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  const __m128i b16 = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  return _mm_packs_epi16(a16, b16);
}

// max |x| over n elements.
inline float abs_max(const float* x, size_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  float amax = simd::hmax(m);
  for (; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

inline int level1(float x, float inv, float qmax) {
  const float v = std::clamp(x * inv, -qmax, qmax);
  return static_cast<int>(v + (v >= 0.0f ? 0.5f : -0.5f));
}

}  // namespace

void quantize_blocks(const float* x, size_t n, int bits, size_t block, uint8_t* q, float* scales) {
  const float qmax = bits == 8 ? 127.0f : 7.0f;
  const auto blocks = static_cast<int64_t>((n + block - 1) / block);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t begin = static_cast<size_t>(b) * block, end = std::min(n, begin + block);
    float amax = abs_max(x + begin, end - begin);
    const float scale = amax > 0.0f ? amax / qmax : 1.0f;
    scales[b] = scale;
    const float inv = 1.0f / scale;
    const __m256 vinv = _mm256_set1_ps(inv), vmax = _mm256_set1_ps(qmax);
    size_t i = begin;
    if (bits == 8) {
      for (; i + 16 <= end; i += 16)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), levels16(x + i, vinv, vmax));
      for (; i < end; ++i) q[i] = static_cast<uint8_t>(static_cast<int8_t>(level1(x[i], inv, qmax)));
    } else {
      const __m128i low = _mm_set1_epi16(0x000F), high = _mm_set1_epi16(0x00F0);
      for (; i + 16 <= end; i += 16) {  // byte pairs (even, odd) as 16-bit lanes: even | odd << 4
        const __m128i w = levels16(x + i, vinv, vmax);
        const __m128i nib = _mm_or_si128(_mm_and_si128(w, low), _mm_and_si128(_mm_srli_epi16(w, 4), high));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i / 2), _mm_packus_epi16(nib, nib));
      }
      for (; i < end; i += 2) {
        const int lo = level1(x[i], inv, qmax), hi = i + 1 < end ? level1(x[i + 1], inv, qmax) : 0;
        q[i / 2] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      }
    }
  }
}

void dequantize_blocks(const uint8_t* q, const float* scales, size_t n, int bits, size_t block, float* out,
                       bool accumulate) {
  const auto blocks = static_cast<int64_t>((n + block - 1) / block);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t begin = static_cast<size_t>(b) * block, end = std::min(n, begin + block);
    const float scale = scales[b];
    for (size_t i = begin; i < end; ++i) {
      int v;
      if (bits == 8) {
        v = static_cast<int8_t>(q[i]);
      } else {
        const int nibble = (q[i / 2] >> (4 * (i % 2))) & 0xF;
        v = nibble >= 8 ? nibble - 16 : nibble;
      }
      const float y = static_cast<float>(v) * scale;
      out[i] = accumulate ? out[i] + y : y;
    }
  }
}

}  // namespace ds::cpu
