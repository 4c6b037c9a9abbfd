// Causal attention of a ragged batch's tokens over a paged KV cache (the inference forward; see
// inference/model_runner.h). A task is one token and a range of its heads: it sweeps the slots of positions
// 0..pos of the token's sequence (found through the block table) once for the scores and once for the values.
// A slot holds all heads side by side, so a task over all heads streams whole slots; tasks split the heads only
// when there are too few tokens to keep every thread busy (a single decode).
// - Scores take keys 8 at a time: eight dot products accumulate in eight registers, and one transposing
//   reduction (6 hadds) turns them into eight scores, instead of a horizontal sum per key and head.
// - Values accumulate in registers, up to 64 channels (8 vectors, each within one head) per sweep, instead of
//   loading and storing the output row for every position.
// Napkin: the cache is the traffic. A decode reads 2 * pos * C * 4 bytes per layer (GPT-2 124M at position 600:
// 3.7 MB per layer, 44 MB per token), 4 * pos * C FLOPs. bm_kernels --only attention measures the paged shapes.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

// Walks a sequence's slots in position order through its block table.
struct SlotCursor {
  const float* kv;
  const int32_t* blocks;
  int64_t block_size, slot_floats;
  int32_t block = 0, offset = 0;
  const float* get() const { return kv + (int64_t(blocks[block]) * block_size + offset) * slot_floats; }
  void next() {
    if (++offset == block_size) {
      offset = 0;
      ++block;
    }
  }
};

// The eight horizontal sums of a[0..8), as one vector.
inline __m256 hsum8x8(const __m256* a) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);  // lane halves apart
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
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

// One task's geometry: the token's query, its heads [h0, h1) and their score rows.
struct Task {
  const float* q;
  float* out;         // the token's output row
  float* sc;          // scores of head h at sc[(h - h0) * row + t]
  int64_t row;
  int h0, h1, HS, n;  // n = pos + 1 keys
  float scale;
};

// Scores, head size a multiple of 8.
void scores_vec(const Task& k, SlotCursor cur) {
  int t = 0;
  for (; t + 8 <= k.n; t += 8) {
    const float* key[8];
    for (int j = 0; j < 8; ++j, cur.next()) key[j] = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      __m256 acc[8];
      for (auto& a : acc) a = _mm256_setzero_ps();
      const int c0 = h * k.HS;
      for (int c = c0; c < c0 + k.HS; c += 8) {
        const __m256 qv = _mm256_loadu_ps(k.q + c);
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(key[j] + c), acc[j]);
      }
      _mm256_storeu_ps(k.sc + (h - k.h0) * k.row + t, _mm256_mul_ps(hsum8x8(acc), _mm256_set1_ps(k.scale)));
    }
  }
  for (; t < k.n; ++t, cur.next()) {
    const float* key = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      __m256 acc = _mm256_setzero_ps();
      for (int c = h * k.HS; c < (h + 1) * k.HS; c += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(k.q + c), _mm256_loadu_ps(key + c), acc);
      k.sc[(h - k.h0) * k.row + t] = simd::hsum(acc) * k.scale;
    }
  }
}

// Values for the NV vectors of channels starting at c0 (each vector inside one head), accumulated over all keys.
template <int NV>
void values_vec(const Task& k, SlotCursor cur, int c0, int C) {
  const float* p[NV];
  for (int j = 0; j < NV; ++j) p[j] = k.sc + ((c0 + 8 * j) / k.HS - k.h0) * k.row;
  __m256 acc[NV];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int t = 0; t < k.n; ++t, cur.next()) {
    const float* v = cur.get() + C + c0;
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(p[j] + t), _mm256_loadu_ps(v + 8 * j), acc[j]);
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(k.out + c0 + 8 * j, acc[j]);
}

// Any head size: one key and head at a time.
void attend_scalar(const Task& k, SlotCursor cur, int C) {
  SlotCursor vcur = cur;
  for (int t = 0; t < k.n; ++t, cur.next()) {
    const float* key = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      float s = 0;
      for (int c = h * k.HS; c < (h + 1) * k.HS; ++c) s += k.q[c] * key[c];
      k.sc[(h - k.h0) * k.row + t] = s * k.scale;
    }
  }
  for (int h = k.h0; h < k.h1; ++h) softmax_inplace(k.sc + (h - k.h0) * k.row, k.n);
  std::fill(k.out + k.h0 * k.HS, k.out + k.h1 * k.HS, 0.0f);
  for (int t = 0; t < k.n; ++t, vcur.next()) {
    const float* v = vcur.get() + C;
    for (int h = k.h0; h < k.h1; ++h) {
      const float w = k.sc[(h - k.h0) * k.row + t];
      for (int c = h * k.HS; c < (h + 1) * k.HS; ++c) k.out[c] += w * v[c];
    }
  }
}

void attend_vec(const Task& k, const SlotCursor& cur, int C) {
  scores_vec(k, cur);
  for (int h = k.h0; h < k.h1; ++h) softmax_inplace(k.sc + (h - k.h0) * k.row, k.n);
  const int end = k.h1 * k.HS;
  for (int c0 = k.h0 * k.HS; c0 < end; c0 += 64) {
    auto sweep = [&](auto nv, int) { values_vec<decltype(nv)::value>(k, cur, c0, C); };
    simd::row_remainder<8>((std::min(end, c0 + 64) - c0) / 8, 0, sweep);
  }
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
      const Task task{qkv + static_cast<int64_t>(i) * 3 * C, out + static_cast<int64_t>(i) * C,
                      scratch + static_cast<int64_t>(omp_get_thread_num()) * NH * row, row, h0, h1, HS, pos + 1,
                      scale};
      const SlotCursor cursor{kv, block_tables[token_seq[i]], block_size, 2 * static_cast<int64_t>(C)};
      if (vec) attend_vec(task, cursor, C);
      else attend_scalar(task, cursor, C);
    }
  }
}

}  // namespace ds::cpu
