// Causal attention of a ragged batch's tokens over a paged KV cache (the inference forward; see
// inference/model_runner.h). Prompt chunks and single tokens take different tasks (Note [Paged attention tasks]).
// Napkin: a decode reads 2 * pos * C elements of cache per layer, 4 bytes each in fp32 and 2 in bf16 (GPT-2 124M
// at position 600: 3.7 MB per layer in fp32); a prompt of P tokens is compute, 2 * P^2 * C FLOPs a layer.
// bm_kernels --only attention measures both, over either cache.
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

// Note [Paged attention tasks]
// - A prompt chunk (at least kMinChunk consecutive new tokens of one sequence) and one head: the head's keys are
//   gathered once, transposed ([HS][T]), and the chunk's queries go through them four at a time, 16 keys per step
//   with no horizontal sums (8 accumulators: 4 queries x 2 vectors of keys); the values of 4 queries accumulate
//   in registers while the V slots stream by once per pair of 8-channel vectors. With AVX-512 the same tiles take
//   32 keys per step and 16 channels per vector (a last 8 channels take the AVX2 kernel).
// - Any other token (a decode, a short chunk) and a range of its heads: it sweeps the slots of positions 0..pos of
//   its sequence once for the scores and once for the values. Keys go 8 at a time: eight dot products in eight
//   registers and one transposing reduction (6 hadds) give eight scores; values accumulate in registers, up to 64
//   channels (8 vectors, each within one head) per sweep. A slot holds all heads side by side, so a task over all
//   heads streams whole slots; tasks split the heads only when there are too few tokens to keep every thread busy
//   (a single decode).

// Keys and values as the cache holds them: fp32, or bf16 (the upper half of an fp32, widened by a shift).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline float load1(float x) { return x; }
inline float load1(uint16_t x) {
  const uint32_t b = uint32_t{x} << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// Walks a sequence's slots in position order through its block table; T is the cache's element type.
template <class T>
struct SlotCursor {
  const T* kv;
  const int32_t* blocks;
  int64_t block_size, slot_elements;
  int32_t block = 0, offset = 0;
  const T* get() const { return kv + (int64_t(blocks[block]) * block_size + offset) * slot_elements; }
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
template <class T>
void scores_vec(const Task& k, SlotCursor<T> cur) {
  int t = 0;
  for (; t + 8 <= k.n; t += 8) {
    const T* key[8];
    for (int j = 0; j < 8; ++j, cur.next()) key[j] = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      __m256 acc[8];
      for (auto& a : acc) a = _mm256_setzero_ps();
      const int c0 = h * k.HS;
      for (int c = c0; c < c0 + k.HS; c += 8) {
        const __m256 qv = _mm256_loadu_ps(k.q + c);
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, load8(key[j] + c), acc[j]);
      }
      _mm256_storeu_ps(k.sc + (h - k.h0) * k.row + t, _mm256_mul_ps(hsum8x8(acc), _mm256_set1_ps(k.scale)));
    }
  }
  for (; t < k.n; ++t, cur.next()) {
    const T* key = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      __m256 acc = _mm256_setzero_ps();
      for (int c = h * k.HS; c < (h + 1) * k.HS; c += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(k.q + c), load8(key + c), acc);
      k.sc[(h - k.h0) * k.row + t] = simd::hsum(acc) * k.scale;
    }
  }
}

// Values for the NV vectors of channels starting at c0 (each vector inside one head), accumulated over all keys.
template <int NV, class T>
void values_vec(const Task& k, SlotCursor<T> cur, int c0, int C) {
  const float* p[NV];
  for (int j = 0; j < NV; ++j) p[j] = k.sc + ((c0 + 8 * j) / k.HS - k.h0) * k.row;
  __m256 acc[NV];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int t = 0; t < k.n; ++t, cur.next()) {
    const T* v = cur.get() + C + c0;
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(p[j] + t), load8(v + 8 * j), acc[j]);
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(k.out + c0 + 8 * j, acc[j]);
}

// Any head size: one key and head at a time.
template <class T>
void attend_scalar(const Task& k, SlotCursor<T> cur, int C) {
  SlotCursor<T> vcur = cur;
  for (int t = 0; t < k.n; ++t, cur.next()) {
    const T* key = cur.get();
    for (int h = k.h0; h < k.h1; ++h) {
      float s = 0;
      for (int c = h * k.HS; c < (h + 1) * k.HS; ++c) s += k.q[c] * load1(key[c]);
      k.sc[(h - k.h0) * k.row + t] = s * k.scale;
    }
  }
  for (int h = k.h0; h < k.h1; ++h) softmax_inplace(k.sc + (h - k.h0) * k.row, k.n);
  std::fill(k.out + k.h0 * k.HS, k.out + k.h1 * k.HS, 0.0f);
  for (int t = 0; t < k.n; ++t, vcur.next()) {
    const T* v = vcur.get() + C;
    for (int h = k.h0; h < k.h1; ++h) {
      const float w = k.sc[(h - k.h0) * k.row + t];
      for (int c = h * k.HS; c < (h + 1) * k.HS; ++c) k.out[c] += w * load1(v[c]);
    }
  }
}

template <class T>
void attend_vec(const Task& k, const SlotCursor<T>& cur, int C) {
  scores_vec(k, cur);
  for (int h = k.h0; h < k.h1; ++h) softmax_inplace(k.sc + (h - k.h0) * k.row, k.n);
  const int end = k.h1 * k.HS;
  for (int c0 = k.h0 * k.HS; c0 < end; c0 += 64) {
    auto sweep = [&](auto nv, int) { values_vec<decltype(nv)::value>(k, cur, c0, C); };
    simd::row_remainder<8>((std::min(end, c0 + 64) - c0) / 8, 0, sweep);
  }
}

// ---- prompt chunks ----

constexpr int kMinChunk = 8;     // fewer consecutive new tokens of a sequence take the per-token path
constexpr int kTileRows = 4;     // queries per tile
constexpr int kKeyStep = 16;     // keys per score step (2 vectors)
constexpr int kKeyStep512 = 32;  // the same with AVX-512
constexpr int kKeyPad = 32;      // key rows are padded to a multiple of either step

inline int64_t padded_keys(int keys) { return (int64_t(keys) + kKeyPad - 1) / kKeyPad * kKeyPad; }

// A run of new tokens i0..i0+n-1 of one sequence at positions pos0..pos0+n-1, and one head of it.
struct Chunk {
  int i0, n, pos0, seq;
};

// Scores of R queries (rows of q, stride qs) against keys [0, keys) of kt ([HS][ld], keys padded with zeros to a
// multiple of 32), scaled, into sc (stride ld).
template <int R>
void chunk_scores(const float* q, int64_t qs, const float* kt, int64_t ld, int HS, int keys, float scale, float* sc) {
  for (int t = 0; t < keys; t += kKeyStep) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int d = 0; d < HS; ++d) {
      const __m256 k0 = _mm256_loadu_ps(kt + d * ld + t), k1 = _mm256_loadu_ps(kt + d * ld + t + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 qb = _mm256_broadcast_ss(q + r * qs + d);
        acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
      }
    }
    const __m256 s8 = _mm256_set1_ps(scale);
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(sc + r * ld + t, _mm256_mul_ps(acc[r][0], s8));
      _mm256_storeu_ps(sc + r * ld + t + 8, _mm256_mul_ps(acc[r][1], s8));
    }
  }
}

// out rows (stride os) [c, c + 8 NV) += sum over keys t < keys of sc[r][t] * V_t[c...], V_t read through the cursor.
template <int R, int NV, class T>
void chunk_values(const float* sc, int64_t ld, SlotCursor<T> cur, int64_t v_offset, int keys, float* out, int64_t os) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int t = 0; t < keys; ++t, cur.next()) {
    const T* v = cur.get() + v_offset;
    __m256 vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = load8(v + 8 * j);
    for (int r = 0; r < R; ++r) {
      const __m256 p = _mm256_broadcast_ss(sc + r * ld + t);
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_fmadd_ps(p, vv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out + r * os + 8 * j, acc[r][j]);
}

DS_AVX512_BEGIN
// The AVX-512 twins of chunk_scores and chunk_values: 32 keys (two vectors) per score step, 16 channels per value
// vector; 8 accumulators either way, so both loops keep two FMA pipes busy.
DS_TARGET_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
DS_TARGET_AVX512 inline __m512 load16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

template <int R>
DS_TARGET_AVX512 void chunk_scores512(const float* q, int64_t qs, const float* kt, int64_t ld, int HS, int keys,
                                      float scale, float* sc) {
  for (int t = 0; t < keys; t += kKeyStep512) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int d = 0; d < HS; ++d) {
      const __m512 k0 = _mm512_loadu_ps(kt + d * ld + t), k1 = _mm512_loadu_ps(kt + d * ld + t + 16);
      for (int r = 0; r < R; ++r) {
        const __m512 qb = _mm512_set1_ps(q[r * qs + d]);
        acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
      }
    }
    const __m512 s16 = _mm512_set1_ps(scale);
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(sc + r * ld + t, _mm512_mul_ps(acc[r][0], s16));
      _mm512_storeu_ps(sc + r * ld + t + 16, _mm512_mul_ps(acc[r][1], s16));
    }
  }
}

template <int R, int NV, class T>
DS_TARGET_AVX512 void chunk_values512(const float* sc, int64_t ld, SlotCursor<T> cur, int64_t v_offset, int keys,
                                      float* out, int64_t os) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int t = 0; t < keys; ++t, cur.next()) {
    const T* v = cur.get() + v_offset;
    __m512 vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = load16(v + 16 * j);
    for (int r = 0; r < R; ++r) {
      const __m512 p = _mm512_set1_ps(sc[r * ld + t]);
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(p, vv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(out + r * os + 16 * j, acc[r][j]);
}
DS_AVX512_END

// One head h of a chunk, on the AVX-512 kernels when `wide`; scratch holds (HS + kTileRows) *
// padded_keys(pos0 + n) floats.
template <class T>
void attend_chunk(const Chunk& ch, int h, const float* qkv, float* out, SlotCursor<T> cur, int C, int HS, float scale,
                  float* scratch, bool wide) {
  const int keys = ch.pos0 + ch.n;
  const int64_t ld = padded_keys(keys);
  float* kt = scratch;             // [HS][ld]
  float* sc = scratch + HS * ld;   // [kTileRows][ld]
  {
    SlotCursor<T> c = cur;
    for (int t = 0; t < keys; ++t, c.next()) {
      const T* k = c.get() + h * HS;
      for (int d = 0; d < HS; ++d) kt[d * ld + t] = load1(k[d]);
    }
    for (int d = 0; d < HS; ++d) std::fill(kt + d * ld + keys, kt + (d + 1) * ld, 0.0f);
  }
  const int64_t qs = 3 * int64_t(C);
  for (int r0 = 0; r0 < ch.n; r0 += kTileRows) {
    const int R = std::min(kTileRows, ch.n - r0);
    const int tile_keys = ch.pos0 + r0 + R;  // the keys the tile's last query sees
    const float* q = qkv + int64_t(ch.i0 + r0) * qs + h * HS;
    auto scores = [&](auto r, int) {
      constexpr int kR = decltype(r)::value;
      if (wide) chunk_scores512<kR>(q, qs, kt, ld, HS, tile_keys, scale, sc);
      else chunk_scores<kR>(q, qs, kt, ld, HS, tile_keys, scale, sc);
    };
    simd::row_remainder<kTileRows>(R, 0, scores);
    for (int r = 0; r < R; ++r) {  // causal: query r sees keys 0..pos0 + r0 + r
      const int seen = ch.pos0 + r0 + r + 1;
      if (wide) {
        simd::softmax_causal_row512(sc + r * ld, seen, tile_keys);
      } else {
        softmax_inplace(sc + r * ld, seen);
        std::fill(sc + r * ld + seen, sc + r * ld + tile_keys, 0.0f);
      }
    }
    float* o = out + int64_t(ch.i0 + r0) * C + h * HS;
    int c = 0;
    while (wide && HS - c >= 16) {  // 32 or 16 channels at a time; a last 8 take the AVX2 kernel below
      const int64_t v_offset = C + h * HS + c;
      const bool two = HS - c >= 32;
      auto values = [&](auto r, int) {
        constexpr int kR = decltype(r)::value;
        if (two) chunk_values512<kR, 2, T>(sc, ld, cur, v_offset, tile_keys, o + c, C);
        else chunk_values512<kR, 1, T>(sc, ld, cur, v_offset, tile_keys, o + c, C);
      };
      simd::row_remainder<kTileRows>(R, 0, values);
      c += two ? 32 : 16;
    }
    for (; c < HS; c += 16) {
      const int64_t v_offset = C + h * HS + c;
      auto values = [&](auto r, int) {
        constexpr int kR = decltype(r)::value;
        if (HS - c >= 16) chunk_values<kR, 2, T>(sc, ld, cur, v_offset, tile_keys, o + c, C);
        else chunk_values<kR, 1, T>(sc, ld, cur, v_offset, tile_keys, o + c, C);
      };
      simd::row_remainder<kTileRows>(R, 0, values);
    }
  }
}

}  // namespace

size_t paged_attention_scratch_floats(int max_pos, int C, int NH) {
  const int64_t keys = padded_keys(std::max(max_pos, 1));
  const int64_t per_thread = std::max<int64_t>(int64_t(NH) * (std::max(max_pos, 1) + 8),
                                               int64_t(C / NH + kTileRows) * keys);
  return static_cast<size_t>(omp_get_max_threads()) * static_cast<size_t>(per_thread);
}

namespace {

template <class T>
void paged_attention(float* out, const float* qkv, int N, const int32_t* token_seq, const int32_t* token_pos,
                     const int32_t* const* block_tables, const T* kv, int block_size, int C, int NH, float* scratch,
                     int max_pos) {
  const int HS = C / NH;
  const bool vec = HS % 8 == 0;
  const bool wide = simd::use_avx512();
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t row = static_cast<int64_t>(std::max(max_pos, 1) + 8);  // scores of one head
  const int64_t per_thread = static_cast<int64_t>(paged_attention_scratch_floats(max_pos, C, NH) /
                                                  static_cast<size_t>(omp_get_max_threads()));
  // Runs of consecutive new tokens of one sequence: long ones are prompt chunks, the rest single tokens (lists
  // kept per calling thread, so passes reuse their memory).
  thread_local std::vector<Chunk> chunks;
  thread_local std::vector<int> singles;
  chunks.clear();
  singles.clear();
  for (int i = 0; i < N;) {
    int j = i + 1;
    while (j < N && token_seq[j] == token_seq[i] && token_pos[j] == token_pos[j - 1] + 1) ++j;
    if (vec && j - i >= kMinChunk) {
      chunks.push_back({i, j - i, token_pos[i], token_seq[i]});
    } else {
      for (int k = i; k < j; ++k) singles.push_back(k);
    }
    i = j;
  }
  // A small pass (a decode of a small model) runs on the calling thread: waking the team costs more than it saves.
  int64_t work = 0;
  for (int i = 0; i < N; ++i) work += (int64_t(token_pos[i]) + 1) * C;
  const bool parallel = work >= (int64_t{1} << 16);
  const int threads = parallel ? omp_get_max_threads() : 1;
  const int n_singles = static_cast<int>(singles.size());
  const int split = std::clamp((2 * threads + n_singles - 1) / std::max(n_singles, 1), 1, NH);  // head ranges
  const int per = (NH + split - 1) / split;
  const int chunk_tasks = static_cast<int>(chunks.size()) * NH;  // first: they are the largest
  const int tasks = chunk_tasks + n_singles * split;
  const Chunk* chunk_list = chunks.data();  // the calling thread's lists, shared with the team
  const int* single_list = singles.data();
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int task = 0; task < tasks; ++task) {
    float* mine = scratch + static_cast<int64_t>(omp_get_thread_num()) * per_thread;
    if (task < chunk_tasks) {
      const Chunk& ch = chunk_list[task / NH];
      DS_DEBUG_ASSERT(ch.pos0 + ch.n <= max_pos, "position beyond max_pos");
      const SlotCursor<T> cursor{kv, block_tables[ch.seq], block_size, 2 * static_cast<int64_t>(C)};
      attend_chunk(ch, task % NH, qkv, out, cursor, C, HS, scale, mine, wide);
      continue;
    }
    const int i = single_list[(task - chunk_tasks) / split];
    const int part = (task - chunk_tasks) % split;
    const int h0 = part * per, h1 = std::min(NH, h0 + per);
    if (h0 >= h1) continue;
    const int32_t pos = token_pos[i];
    DS_DEBUG_ASSERT(pos < max_pos, "position beyond max_pos");
    const Task t{qkv + static_cast<int64_t>(i) * 3 * C, out + static_cast<int64_t>(i) * C, mine, row, h0, h1, HS,
                 pos + 1, scale};
    const SlotCursor<T> cursor{kv, block_tables[token_seq[i]], block_size, 2 * static_cast<int64_t>(C)};
    if (vec) attend_vec(t, cursor, C);
    else attend_scalar(t, cursor, C);
  }
}

}  // namespace

void paged_attention_forward(float* out, const float* qkv, int N, const int32_t* token_seq, const int32_t* token_pos,
                             const int32_t* const* block_tables, const void* kv, DType kv_dtype, int block_size, int C,
                             int NH, float* scratch, int max_pos) {
  DS_ASSERT(kv_dtype == DType::f32 || kv_dtype == DType::bf16, "paged attention over a {} KV cache",
            dtype_name(kv_dtype));
  if (kv_dtype == DType::bf16) {
    paged_attention(out, qkv, N, token_seq, token_pos, block_tables, static_cast<const uint16_t*>(kv), block_size, C,
                    NH, scratch, max_pos);
  } else {
    paged_attention(out, qkv, N, token_seq, token_pos, block_tables, static_cast<const float*>(kv), block_size, C, NH,
                    scratch, max_pos);
  }
}

}  // namespace ds::cpu
