// Causal attention of a ragged batch's tokens over a paged KV cache (the inference forward; see
// inference/model_runner.h). One task per (token, head): scores against the keys at positions 0..pos of its
// sequence, found through the sequence's block table; a softmax; the weighted sum of the values.
// Napkin: 4 * pos * HS FLOPs per task and 2 * pos * HS * 4 bytes read from the cache; a decode of 16 sequences at
// position 128 with 4 layers x 4 heads of 32 is 4 MFLOP, well under a millisecond once vectorised (the scalar form
// was the largest item of a decode pass). The dot products use AVX2 when HS is a multiple of 8.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {

size_t paged_attention_scratch_floats(int max_pos) {
  return static_cast<size_t>(omp_get_max_threads()) * static_cast<size_t>(std::max(max_pos, 1) + 8);
}

void paged_attention_forward(float* out, const float* qkv, int N, const int32_t* token_seq, const int32_t* token_pos,
                             const int32_t* const* block_tables, const float* kv, int block_size, int C, int NH,
                             float* scratch, int max_pos) {
  const int HS = C / NH;
  const bool vec = HS % 8 == 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t slot = 2 * static_cast<int64_t>(C);
  const int64_t stride = static_cast<int64_t>(std::max(max_pos, 1) + 8);
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
  for (int i = 0; i < N; ++i) {
    for (int h = 0; h < NH; ++h) {
      const int32_t pos = token_pos[i];
      DS_DEBUG_ASSERT(pos < max_pos, "position beyond max_pos");
      const int32_t* blocks = block_tables[token_seq[i]];
      float* sc = scratch + omp_get_thread_num() * stride;
      const float* q = qkv + static_cast<int64_t>(i) * 3 * C + h * HS;
      auto key = [&](int32_t t) { return kv + (int64_t(blocks[t / block_size]) * block_size + t % block_size) * slot; };
      float maxv = -INFINITY;
      for (int32_t t = 0; t <= pos; ++t) {
        const float* k = key(t) + h * HS;
        float dot;
        if (vec) {
          __m256 a = _mm256_setzero_ps();
          for (int c = 0; c < HS; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a);
          dot = simd::hsum(a);
        } else {
          dot = 0;
          for (int c = 0; c < HS; ++c) dot += q[c] * k[c];
        }
        sc[t] = dot * scale;
        maxv = std::max(maxv, sc[t]);
      }
      float sum = 0;
      int32_t t = 0;
      __m256 s8 = _mm256_setzero_ps();
      const __m256 m8 = _mm256_set1_ps(maxv);
      for (; t + 8 <= pos + 1; t += 8) {
        const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + t), m8));
        _mm256_storeu_ps(sc + t, e);
        s8 = _mm256_add_ps(s8, e);
      }
      sum = simd::hsum(s8);
      for (; t <= pos; ++t) {
        sc[t] = std::exp(sc[t] - maxv);
        sum += sc[t];
      }
      const float inv = 1.0f / sum;
      float* o = out + static_cast<int64_t>(i) * C + h * HS;
      std::fill(o, o + HS, 0.0f);
      for (int32_t u = 0; u <= pos; ++u) {
        const float* v = key(u) + C + h * HS;
        const float p = sc[u] * inv;
        if (vec) {
          const __m256 p8 = _mm256_set1_ps(p);
          for (int c = 0; c < HS; c += 8)
            _mm256_storeu_ps(o + c, _mm256_fmadd_ps(p8, _mm256_loadu_ps(v + c), _mm256_loadu_ps(o + c)));
        } else {
          for (int c = 0; c < HS; ++c) o[c] += p * v[c];
        }
      }
    }
  }
}

}  // namespace ds::cpu
