// LayerNorm forward/backward (eps 1e-5, biased variance, mean and rstd saved), AVX2 over a row.
// Forward is two-pass per row (mean, then centred variance) while the row sits in L1. Backward computes the
// parameter grads first, parallel over 32-column blocks that each sum all rows in order (deterministic and
// independent of the thread count, no atomics), then dinp row-parallel; that order also makes dinp == dout safe.
// Napkin: forward reads 4 B and writes 4 B per element, backward reads 16 B and writes 4 B; memory bound.
// GPT-2 124M (N=1024, C=768) is 3 MB a tensor: measured 0.14 ms forward and 0.26 ms backward on one core.
#include <algorithm>
#include <cmath>

#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

constexpr size_t kParallelMin = size_t{1} << 15;
constexpr float kEps = 1e-5f;
constexpr int kColBlock = 32;

using simd::hsum;

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int i = 0; i < N; ++i) {
    const float* x = inp + size_t(i) * C;
    float* y = out + size_t(i) * C;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int c = 0;
    for (; c + 16 <= C; c += 16) {
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + c));
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + c + 8));
    }
    float sum = hsum(_mm256_add_ps(s0, s1));
    for (; c < C; ++c) sum += x[c];
    const float m = sum / C;

    const __m256 vm = _mm256_set1_ps(m);
    s0 = _mm256_setzero_ps();
    s1 = _mm256_setzero_ps();
    c = 0;
    for (; c + 16 <= C; c += 16) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + c), vm);
      const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + c + 8), vm);
      s0 = _mm256_fmadd_ps(d0, d0, s0);
      s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    float var = hsum(_mm256_add_ps(s0, s1));
    for (; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const float rs = 1.0f / std::sqrt(var / C + kEps);

    const __m256 vrs = _mm256_set1_ps(rs);
    c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm), vrs);
      _mm256_storeu_ps(y + c, _mm256_fmadd_ps(n, _mm256_loadu_ps(weight + c), _mm256_loadu_ps(bias + c)));
    }
    for (; c < C; ++c) y[c] = std::fma((x[c] - m) * rs, weight[c], bias[c]);
    if (mean) mean[i] = m;
    if (rstd) rstd[i] = rs;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  const bool parallel = size_t(N) * C >= kParallelMin;

  // Parameter grads: dweight[c] += sum_i dout[i,c] * norm[i,c], dbias[c] += sum_i dout[i,c]. Skipped without
  // dweight (a zero-bubble schedule's input-gradient pass), as the input gradient is without dinp (its
  // weight-gradient pass).
  const int ncb = dweight ? (C + kColBlock - 1) / kColBlock : 0;
#pragma omp parallel for schedule(static) if (parallel)
  for (int cb = 0; cb < ncb; ++cb) {
    const int c0 = cb * kColBlock;
    const int c1 = std::min(C, c0 + kColBlock);
    if (c1 - c0 == kColBlock) {
      __m256 dw[4], db[4];
      for (int u = 0; u < 4; ++u) dw[u] = db[u] = _mm256_setzero_ps();
      for (int i = 0; i < N; ++i) {
        const float* x = inp + size_t(i) * C + c0;
        const float* g = dout + size_t(i) * C + c0;
        const __m256 vm = _mm256_set1_ps(mean[i]), vrs = _mm256_set1_ps(rstd[i]);
        for (int u = 0; u < 4; ++u) {
          const __m256 gv = _mm256_loadu_ps(g + 8 * u);
          const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + 8 * u), vm), vrs);
          dw[u] = _mm256_fmadd_ps(gv, n, dw[u]);
          db[u] = _mm256_add_ps(db[u], gv);
        }
      }
      for (int u = 0; u < 4; ++u) {
        _mm256_storeu_ps(dweight + c0 + 8 * u, _mm256_add_ps(_mm256_loadu_ps(dweight + c0 + 8 * u), dw[u]));
        _mm256_storeu_ps(dbias + c0 + 8 * u, _mm256_add_ps(_mm256_loadu_ps(dbias + c0 + 8 * u), db[u]));
      }
    } else {
      float dw[kColBlock] = {}, db[kColBlock] = {};
      for (int i = 0; i < N; ++i) {
        const float* x = inp + size_t(i) * C;
        const float* g = dout + size_t(i) * C;
        for (int c = c0; c < c1; ++c) {
          dw[c - c0] = std::fma(g[c], (x[c] - mean[i]) * rstd[i], dw[c - c0]);
          db[c - c0] += g[c];
        }
      }
      for (int c = c0; c < c1; ++c) {
        dweight[c] += dw[c - c0];
        dbias[c] += db[c - c0];
      }
    }
  }

  // dinp = rstd * (w*dout - mean(w*dout) - norm * mean(w*dout*norm)), row by row.
  const int rows = dinp ? N : 0;
#pragma omp parallel for schedule(static) if (parallel)
  for (int i = 0; i < rows; ++i) {
    const float* x = inp + size_t(i) * C;
    const float* g = dout + size_t(i) * C;
    float* dx = dinp + size_t(i) * C;
    const float m = mean[i], rs = rstd[i];
    const __m256 vm = _mm256_set1_ps(m), vrs = _mm256_set1_ps(rs);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 dn = _mm256_mul_ps(_mm256_loadu_ps(weight + c), _mm256_loadu_ps(g + c));
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm), vrs);
      a0 = _mm256_add_ps(a0, dn);
      a1 = _mm256_fmadd_ps(dn, n, a1);
    }
    float sum_dn = hsum(a0), sum_dnn = hsum(a1);
    for (; c < C; ++c) {
      const float dn = weight[c] * g[c];
      sum_dn += dn;
      sum_dnn = std::fma(dn, (x[c] - m) * rs, sum_dnn);
    }
    const float mdn = sum_dn / C, mdnn = sum_dnn / C;
    const __m256 vmdn = _mm256_set1_ps(mdn), vmdnn = _mm256_set1_ps(mdnn);
    c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 dn = _mm256_mul_ps(_mm256_loadu_ps(weight + c), _mm256_loadu_ps(g + c));
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vm), vrs);
      const __m256 t = _mm256_fnmadd_ps(n, vmdnn, _mm256_sub_ps(dn, vmdn));
      _mm256_storeu_ps(dx + c, _mm256_mul_ps(t, vrs));
    }
    for (; c < C; ++c) {
      const float dn = weight[c] * g[c];
      const float n = (x[c] - m) * rs;
      dx[c] = (dn - mdn - n * mdnn) * rs;
    }
  }
}

}  // namespace ds::cpu
