// Fused tied LM head + softmax + cross-entropy, forward and backward, in row chunks through scratch.
// Per chunk of R rows: logits = x·wte^T (sgemm), a row-parallel softmax/loss that turns the logits into
// dlogits in place, then dx = dlogits·wte and dwte += dlogits^T·x (sgemm, beta = 1). sgemm calls stay outside
// our OpenMP regions. R = 512 (103 MB of scratch at V = 50257): the dwte GEMM has K = R and streams all of
// dwte (154 MB) per chunk, so R sets its arithmetic intensity. The three GEMMs alone, N=1024 C=768, as a ratio
// to the sgemm reference (bm_kernels --explore --only classifier): R=128/256/512 give 0.82/0.94/0.97 on one
// core and 0.86/0.88/0.96 on two.
// Napkin (N=1024, C=768, V=50257): 3 GEMMs x 2NCV = 237 GFLOP, ~1.9 s on one core at 130 GFLOP/s (measured
// 0.97 of sgemm end to end, 1.0 s on two cores); the softmax is 51 M exps, ~25 ms.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

constexpr int kChunkRows = 512;

using simd::hmax;
using simd::hsum;
using simd::tail_mask;

// Softmax cross-entropy of one row of logits. Returns loss = logsumexp - logit[target]. With want_grad the row
// is overwritten by grad_scale * (softmax - onehot(target)).
float softmax_xent_row(float* row, int V, int target, bool want_grad, float grad_scale) {
  const int V8 = V & ~7;
  const int rem = V - V8;
  const __m256i mask = tail_mask(rem);

  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int j = 0; j < V8; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  float mx = hmax(vmax);
  for (int j = V8; j < V; ++j) mx = std::max(mx, row[j]);
  const float target_logit = row[target];

  // Sum of exp in float lanes, folded into double every 1024 elements.
  const __m256 vm = _mm256_set1_ps(mx);
  double sum = 0.0;
  __m256 acc = _mm256_setzero_ps();
  int j = 0;
  for (int next_fold = 1024; j < V8; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    if (want_grad) _mm256_storeu_ps(row + j, e);
    acc = _mm256_add_ps(acc, e);
    if (j + 8 == next_fold) {
      sum += hsum(acc);
      acc = _mm256_setzero_ps();
      next_fold += 1024;
    }
  }
  if (rem) {
    const __m256 e = _mm256_and_ps(simd::exp256(_mm256_sub_ps(_mm256_maskload_ps(row + V8, mask), vm)),
                                   _mm256_castsi256_ps(mask));
    if (want_grad) _mm256_maskstore_ps(row + V8, mask, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum += hsum(acc);
  const float loss = float(std::log(sum) + double(mx) - double(target_logit));

  if (want_grad) {
    const __m256 scale = _mm256_set1_ps(float(grad_scale / sum));
    for (j = 0; j < V8; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), scale));
    if (rem) _mm256_maskstore_ps(row + V8, mask, _mm256_mul_ps(_mm256_maskload_ps(row + V8, mask), scale));
    row[target] -= grad_scale;
  }
  return loss;
}

}  // namespace

size_t classifier_scratch_floats(int N, int V) { return size_t(std::min(N, kChunkRows)) * size_t(V); }

double classifier_forward_backward(float* dx, float* dwte, float* losses, const float* x, const float* wte,
                                   const int32_t* targets, float grad_scale, float* scratch, int N, int C, int V) {
  for (int i = 0; i < N; ++i) {
    DS_CHECK(targets[i] >= -1 && targets[i] < V,
             "[kernels] classifier: target {} at row {} is outside [0, {}) and is not the ignore index -1",
             targets[i], i, V);
  }
  const bool want_grad = dx != nullptr;
  double total = 0.0;
  float row_loss[kChunkRows];
  for (int n0 = 0; n0 < N; n0 += kChunkRows) {
    const int rows = std::min(kChunkRows, N - n0);
    const float* xc = x + size_t(n0) * C;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.0f, xc, C, wte, C, 0.0f, scratch, V);
#pragma omp parallel for schedule(dynamic, 4) if (size_t(rows) * V >= (size_t{1} << 15))
    for (int r = 0; r < rows; ++r) {
      float* row = scratch + size_t(r) * V;
      const int target = targets[n0 + r];
      if (target < 0) {
        row_loss[r] = 0.0f;
        if (want_grad) std::memset(row, 0, sizeof(float) * size_t(V));
      } else {
        row_loss[r] = softmax_xent_row(row, V, target, want_grad, grad_scale);
      }
    }
    for (int r = 0; r < rows; ++r) {
      if (targets[n0 + r] >= 0) total += row_loss[r];
      if (losses) losses[n0 + r] = row_loss[r];
    }
    if (want_grad) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, V, 1.0f, scratch, V, wte, C, 0.0f,
                  dx + size_t(n0) * C, C);
      if (dwte) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, rows, 1.0f, scratch, V, xc, C, 1.0f, dwte, C);
      }
    }
  }
  return total;
}

void logits_forward(float* logits, const float* x, const float* wte, int N, int C, int V) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, x, C, wte, C, 0.0f, logits, V);
}

void logits_rows_forward(float* logits, const float* x, const float* w, int N, int C, int V, int row_begin,
                         int rows) {
  DS_CHECK(row_begin >= 0 && rows >= 0 && row_begin + rows <= V, "[kernels] logits_rows_forward: rows [{}, {}) "
           "are outside the vocabulary [0, {})", row_begin, row_begin + rows, V);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, rows, C, 1.0f, x, C, w, C, 0.0f, logits + row_begin, V);
}

double softmax_xent_rows(float* logits, float* losses, const int32_t* targets, bool want_grad, float grad_scale,
                         int N, int V) {
  for (int i = 0; i < N; ++i) {
    DS_CHECK(targets[i] >= -1 && targets[i] < V,
             "[kernels] softmax_xent_rows: target {} at row {} is outside [0, {}) and is not the ignore index -1",
             targets[i], i, V);
  }
  std::vector<float> row_loss(static_cast<size_t>(N));
#pragma omp parallel for schedule(dynamic, 4) if (size_t(N) * V >= (size_t{1} << 15))
  for (int r = 0; r < N; ++r) {
    float* row = logits + size_t(r) * V;
    if (targets[r] < 0) {
      row_loss[r] = 0.0f;
      if (want_grad) std::memset(row, 0, sizeof(float) * size_t(V));
    } else {
      row_loss[r] = softmax_xent_row(row, V, targets[r], want_grad, grad_scale);
    }
  }
  double total = 0.0;
  for (int r = 0; r < N; ++r) {
    if (targets[r] >= 0) total += row_loss[r];
    if (losses) losses[r] = row_loss[r];
  }
  return total;
}

void classifier_rows_backward(float* dx, float* dw, const float* dlogits, const float* x, const float* w, int N,
                              int C, int V, int row_begin, int rows) {
  DS_CHECK(row_begin >= 0 && rows >= 0 && row_begin + rows <= V, "[kernels] classifier_rows_backward: rows [{}, {}) "
           "are outside the vocabulary [0, {})", row_begin, row_begin + rows, V);
  const float* d = dlogits + row_begin;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, rows, 1.0f, d, V, w, C, 1.0f, dx, C);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, C, N, 1.0f, d, V, x, C, 1.0f, dw, C);
}

// The vocabulary-parallel passes: plain loops (the exps are a few percent of the head's GEMMs).
void vocab_xent_max(const float* logits, float* stats, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= (size_t{1} << 15))
  for (int r = 0; r < N; ++r) {
    const float* row = logits + size_t(r) * V;
    float mx = -INFINITY;
    for (int j = 0; j < V; ++j) mx = std::max(mx, row[j]);
    stats[r] = mx;
  }
}

void vocab_xent_sums(const float* logits, float* stats, const int32_t* targets, int N, int V, int begin) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= (size_t{1} << 15))
  for (int r = 0; r < N; ++r) {
    const float* row = logits + size_t(r) * V;
    const float mx = stats[r];
    double sum = 0.0;
    for (int j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
    stats[N + r] = static_cast<float>(sum);
    const int t = targets[r] - begin;
    stats[2 * N + r] = targets[r] >= 0 && t >= 0 && t < V ? row[t] : 0.0f;
  }
}

double vocab_xent_finish(float* logits, const float* stats, const int32_t* targets, bool want_grad,
                         float grad_scale, int N, int V, int begin) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (size_t(N) * V >= (size_t{1} << 15))
  for (int r = 0; r < N; ++r) {
    float* row = logits + size_t(r) * V;
    const float mx = stats[r], sum = stats[N + r];
    if (targets[r] >= 0) total += std::log(static_cast<double>(sum)) + mx - stats[2 * N + r];
    if (!want_grad) continue;
    if (targets[r] < 0) {
      std::memset(row, 0, sizeof(float) * size_t(V));
      continue;
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < V; ++j) row[j] = grad_scale * std::exp(row[j] - mx) * inv;
    const int t = targets[r] - begin;
    if (t >= 0 && t < V) row[t] -= grad_scale;
  }
  return total;
}

void vocab_rows_forward(float* out, const float* table, const int32_t* ids, int N, int C, int begin, int rows) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= (size_t{1} << 15))
  for (int i = 0; i < N; ++i) {
    const int r = ids[i] - begin;
    float* o = out + size_t(i) * C;
    if (r >= 0 && r < rows) {
      std::memcpy(o, table + size_t(r) * C, sizeof(float) * size_t(C));
    } else {
      std::memset(o, 0, sizeof(float) * size_t(C));
    }
  }
}

void vocab_rows_backward(float* dtable, const float* dx, const int32_t* ids, int N, int C, int begin, int rows) {
  for (int i = 0; i < N; ++i) {  // serial: two ids may share a row
    const int r = ids[i] - begin;
    if (r < 0 || r >= rows) continue;
    float* d = dtable + size_t(r) * C;
    const float* g = dx + size_t(i) * C;
    for (int c = 0; c < C; ++c) d[c] += g[c];
  }
}

}  // namespace ds::cpu
