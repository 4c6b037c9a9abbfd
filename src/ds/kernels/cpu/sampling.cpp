// The O(V) passes of token sampling (inference/sampler.cpp) over a row of logits, each one or two vector sweeps:
// at GPT-2's 50,257 tokens scalar loops cost about as much as a decode pass of the default model, and a full sort
// for top_p ten times that (bm_kernels --only sampling prints the sampler beside them).
#include <algorithm>
#include <cmath>

#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {

namespace {

constexpr float kExpFloor = -87.0f;  // exponents below this give weight 0 (e^-87 ~ 1.6e-38, the float minimum)

// Sums of float lanes kept in double (4 + 4 lanes), so a total over the vocabulary is exact to about 1e-13: the
// top_p nucleus ends where the running mass crosses top_p * total, and over a broad distribution its last tokens
// are a millionth of the mass each, finer than a float total resolves.
struct DoubleSum {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(__m256 v) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double value() const {
    alignas(32) double l[4];
    _mm256_store_pd(l, _mm256_add_pd(lo, hi));
    return (l[0] + l[1]) + (l[2] + l[3]);
  }
};

}  // namespace

int64_t argmax(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);  // a NaN lane keeps m
  float best = simd::hmax(m);
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  const __m256 b = _mm256_set1_ps(best);
  for (i = 0; i + 8 <= n; i += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), b, _CMP_EQ_OQ));
    if (hit) return i + __builtin_ctz(static_cast<unsigned>(hit));
  }
  for (; i < n; ++i) {
    if (x[i] == best) return i;
  }
  return 0;  // every value NaN
}

double exp_weights(float* w, const float* x, int64_t n, float max, float inv_t) {
  const __m256 m = _mm256_set1_ps(max), it = _mm256_set1_ps(inv_t), floor = _mm256_set1_ps(kExpFloor);
  DoubleSum sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), it);
    const __m256 e = _mm256_and_ps(simd::exp256(z), _mm256_cmp_ps(z, floor, _CMP_GE_OQ));  // NaN, -inf: 0
    _mm256_storeu_ps(w + i, e);
    sum.add(e);
  }
  double total = sum.value();
  for (; i < n; ++i) {
    const float z = (x[i] - max) * inv_t;
    w[i] = z >= kExpFloor ? std::exp(z) : 0.0f;
    total += w[i];
  }
  return total;
}

double mass_at_least(const float* w, int64_t n, float threshold) {
  const __m256 t = _mm256_set1_ps(threshold);
  DoubleSum sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(w + i);
    sum.add(_mm256_and_ps(v, _mm256_cmp_ps(v, t, _CMP_GE_OQ)));
  }
  double total = sum.value();
  for (; i < n; ++i) total += w[i] >= threshold ? w[i] : 0.0f;
  return total;
}

int64_t draw_index(const float* w, int64_t n, double target) {
  constexpr int64_t kBlock = 64;
  double cum = 0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {  // skip whole blocks that end before the target
    DoubleSum sum;  // in double, as the running sum below, so skipping a block never moves a boundary
    for (int64_t j = 0; j < kBlock; j += 8) sum.add(_mm256_loadu_ps(w + i + j));
    const double block = sum.value();
    if (target < cum + block) break;
    cum += block;
  }
  for (; i < n; ++i) {
    cum += w[i];
    if (target < cum) return i;
  }
  for (int64_t j = n; j-- > 0;) {  // rounding left the target at or past the end: the last token with weight
    if (w[j] > 0) return j;
  }
  return -1;
}

void candidates_at_least(std::vector<std::pair<float, int32_t>>& out, const float* x, const float* w, int32_t n,
                         float tau) {
  out.clear();
  const __m256 t = _mm256_set1_ps(tau), zero = _mm256_setzero_ps();
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(w + i);
    int hit = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, t, _CMP_GE_OQ), _mm256_cmp_ps(v, zero, _CMP_GT_OQ)));
    while (hit) {
      const int32_t id = i + __builtin_ctz(static_cast<unsigned>(hit));
      hit &= hit - 1;
      out.emplace_back(x[id], id);
    }
  }
  for (; i < n; ++i) {
    if (w[i] >= tau && w[i] > 0.0f) out.emplace_back(x[i], i);
  }
}

void top_k_candidates(std::vector<std::pair<float, int32_t>>& out, const float* x, int32_t n, int32_t k) {
  out.clear();
  if (k <= 0) return;
  const size_t keep = static_cast<size_t>(k), cap = std::max<size_t>(4 * keep, 256);
  float floor = -INFINITY;  // the k-th best value so far: anything below it is out
  auto compact = [&] {
    std::nth_element(out.begin(), out.begin() + static_cast<ptrdiff_t>(keep - 1), out.end(), candidate_before);
    out.resize(keep);
    floor = out[keep - 1].first;  // the worst kept: nth_element puts it last
  };
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(floor), _CMP_GE_OQ));
    while (hit) {
      const int32_t id = i + __builtin_ctz(static_cast<unsigned>(hit));
      hit &= hit - 1;
      out.emplace_back(x[id], id);
    }
    if (out.size() >= cap) compact();
  }
  for (; i < n; ++i) {
    if (x[i] >= floor) out.emplace_back(x[i], i);
  }
  if (out.size() > keep) compact();
}

}  // namespace ds::cpu
