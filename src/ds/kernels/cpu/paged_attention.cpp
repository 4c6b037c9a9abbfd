// Causal attention of a ragged batch's tokens over a paged KV cache (the inference forward; see
// inference/model_runner.h). A task is one token and a range of its heads: it sweeps the slots of positions
// 0..pos of the token's sequence (found through the block table) once for the scores and once for the values,
// reading each slot's channels of those heads contiguously. A slot holds all heads side by side, so a task over
// all heads streams whole slots; tasks split the heads only when there are too few tokens to keep every thread
// busy (a single decode).
// Napkin: the cache is the traffic. A decode reads 2 * pos * C * 4 bytes per layer (GPT-2 124M at position 600:
// 3.7 MB per layer, 44 MB per token), 4 * pos * C FLOPs. With strided per-head reads (one 256-byte piece of each
// 6 KB slot) a pass of 16 such decodes took 117 ms; with whole-slot sweeps, 71 ms.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

inline float dot(const float* a, const float* b, int n, bool vec) {
  if (vec) {
    __m256 acc = _mm256_setzero_ps();
    for (int c = 0; c < n; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
    return simd::hsum(acc);
  }
  float s = 0;
  for (int c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

inline void axpy(float* y, float a, const float* x, int n, bool vec) {
  if (vec) {
    const __m256 a8 = _mm256_set1_ps(a);
    for (int c = 0; c < n; c += 8) _mm256_storeu_ps(y + c, _mm256_fmadd_ps(a8, _mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
    return;
  }
  for (int c = 0; c < n; ++c) y[c] += a * x[c];
}

// In place: sc[0..n) -> exp(sc - max) / sum.
void softmax_inplace(float* sc, int n) {
  float maxv = -INFINITY;
  for (int t = 0; t < n; ++t) maxv = std::max(maxv, sc[t]);
  const __m256 m8 = _mm256_set1_ps(maxv);
  __m256 s8 = _mm256_setzero_ps();
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + t), m8));
    _mm256_storeu_ps(sc + t, e);
    s8 = _mm256_add_ps(s8, e);
  }
  float sum = simd::hsum(s8);
  for (; t < n; ++t) {
    sc[t] = std::exp(sc[t] - maxv);
    sum += sc[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t < n; ++t) sc[t] *= inv;
}

}  // namespace

size_t paged_attention_scratch_floats(int max_pos, int NH) {
  return static_cast<size_t>(omp_get_max_threads()) * static_cast<size_t>(NH) *
         static_cast<size_t>(std::max(max_pos, 1) + 8);
}

void paged_attention_forward(float* out, const float* qkv, int N, const int32_t* token_seq, const int32_t* token_pos,
                             const int32_t* const* block_tables, const float* kv, int block_size, int C, int NH,
                             float* scratch, int max_pos) {
  const int HS = C / NH;
  const bool vec = HS % 8 == 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t slot = 2 * static_cast<int64_t>(C);
  const int64_t row = static_cast<int64_t>(std::max(max_pos, 1) + 8);  // scores of one head
  // A small pass (a decode of a small model) runs on the calling thread: waking the team costs more than it saves.
  int64_t work = 0;
  for (int i = 0; i < N; ++i) work += (int64_t(token_pos[i]) + 1) * C;
  const bool parallel = work >= (int64_t{1} << 16);
  const int threads = parallel ? omp_get_max_threads() : 1;
  const int split = std::clamp((2 * threads + N - 1) / std::max(N, 1), 1, NH);  // head ranges per token
  const int per = (NH + split - 1) / split;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (parallel)
  for (int i = 0; i < N; ++i) {
    for (int part = 0; part < split; ++part) {
      const int h0 = part * per, h1 = std::min(NH, h0 + per);
      if (h0 >= h1) continue;
      const int32_t pos = token_pos[i];
      DS_DEBUG_ASSERT(pos < max_pos, "position beyond max_pos");
      const int32_t* blocks = block_tables[token_seq[i]];
      float* sc = scratch + static_cast<int64_t>(omp_get_thread_num()) * NH * row;
      const float* q = qkv + static_cast<int64_t>(i) * 3 * C;
      for (int32_t t = 0; t <= pos; ++t) {
        const float* k = kv + (int64_t(blocks[t / block_size]) * block_size + t % block_size) * slot;
        for (int h = h0; h < h1; ++h) sc[(h - h0) * row + t] = dot(q + h * HS, k + h * HS, HS, vec) * scale;
      }
      for (int h = h0; h < h1; ++h) softmax_inplace(sc + (h - h0) * row, pos + 1);
      float* o = out + static_cast<int64_t>(i) * C;
      std::fill(o + h0 * HS, o + h1 * HS, 0.0f);
      for (int32_t t = 0; t <= pos; ++t) {
        const float* v = kv + (int64_t(blocks[t / block_size]) * block_size + t % block_size) * slot + C;
        for (int h = h0; h < h1; ++h) axpy(o + h * HS, sc[(h - h0) * row + t], v + h * HS, HS, vec);
      }
    }
  }
}

}  // namespace ds::cpu
