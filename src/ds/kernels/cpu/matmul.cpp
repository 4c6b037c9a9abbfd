// Linear layer (HF Conv1D layout, weight [IC, OC]) forward and backward on OpenBLAS cblas_sgemm.
// Forward fills out with the bias rows (a write-only pass) and lets sgemm accumulate with beta = 1; backward is
// two sgemms (dweight with beta = 1 for the += convention) plus a column sum for dbias that is parallel over
// 32-column blocks, rows summed in order, so it is deterministic for any thread count. sgemm is never called
// from inside our own OpenMP region: OpenBLAS (OpenMP build) brings its own team over the same two cores.
// Napkin: 2*N*IC*OC flops per GEMM, so the bound is the sgemm rate: GPT-2 124M's N=1024, 768->2304 is
// 3.6 GFLOP, 28 ms forward on one core at the measured 130 GFLOP/s (bm_kernels: 0.95-1.0 of the sgemm reference
// forward and backward). The bias fill and the dbias sum move N*OC*4 bytes each, well under 1% of the GEMM.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>

#include "ds/kernels/cpu/kernels.h"

namespace ds::cpu {
namespace {

constexpr size_t kParallelMin = size_t{1} << 15;
constexpr int kColBlock = 32;

// dbias[c] += sum_i dout[i, c]
void column_sum_accumulate(float* dbias, const float* dout, int N, int OC) {
  const int ncb = (OC + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (size_t(N) * OC >= kParallelMin)
  for (int cb = 0; cb < ncb; ++cb) {
    const int c0 = cb * kColBlock;
    const int c1 = std::min(OC, c0 + kColBlock);
    if (c1 - c0 == kColBlock) {
      __m256 acc[4];
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_setzero_ps();
      for (int i = 0; i < N; ++i) {
        const float* g = dout + size_t(i) * OC + c0;
        for (int u = 0; u < 4; ++u) acc[u] = _mm256_add_ps(acc[u], _mm256_loadu_ps(g + 8 * u));
      }
      for (int u = 0; u < 4; ++u) {
        _mm256_storeu_ps(dbias + c0 + 8 * u, _mm256_add_ps(_mm256_loadu_ps(dbias + c0 + 8 * u), acc[u]));
      }
    } else {
      float acc[kColBlock] = {};
      for (int i = 0; i < N; ++i) {
        const float* g = dout + size_t(i) * OC;
        for (int c = c0; c < c1; ++c) acc[c - c0] += g[c];
      }
      for (int c = c0; c < c1; ++c) dbias[c] += acc[c - c0];
    }
  }
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
  float beta = 0.0f;
  if (bias) {
#pragma omp parallel for schedule(static) if (size_t(N) * OC >= kParallelMin)
    for (int i = 0; i < N; ++i) std::copy(bias, bias + OC, out + size_t(i) * OC);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, OC, IC, 1.0f, inp, IC, weight, OC, beta, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  if (dinp) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, IC, OC, 1.0f, dout, OC, weight, OC, 0.0f, dinp, IC);
  }
  if (dweight) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IC, OC, N, 1.0f, inp, IC, dout, OC, 1.0f, dweight, OC);
  }
  if (dbias) column_sum_accumulate(dbias, dout, N, OC);
}

}  // namespace ds::cpu
