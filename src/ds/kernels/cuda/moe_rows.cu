// MoE serving's data movement on the GPU (kernels.h): the gather of a batch's rows into expert groups, the weighted
// sum of each token's expert outputs into the residual stream, and Residual-MoE's mix. One block per row, threads
// over the C channels: memory-bound, C floats read and written per row and assignment.
#include <algorithm>

#include "ds/kernels/cuda/kernels.h"

namespace ds::cuda {
namespace {
constexpr int kThreads = 128;

__global__ void gather_rows_kernel(float* out, const float* x, const int32_t* index, int C) {
  const int64_t i = blockIdx.x;
  const float* src = x + int64_t(index[i]) * C;
  float* dst = out + i * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

__global__ void combine_rows_add_kernel(float* x, const float* rows, const int32_t* row, const float* weight, int k,
                                        int C) {
  const int64_t s = blockIdx.x;
  float* dst = x + s * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int32_t r = row[s * k + j];
      if (r >= 0) sum += weight[s * k + j] * rows[int64_t(r) * C + c];
    }
    dst[c] += sum;
  }
}

__global__ void moe_mix_residual_kernel(float* x, const float* moe, const float* mlp, const float* coef, int C) {
  const int64_t s = blockIdx.x;
  const float a = coef[2 * s], b = coef[2 * s + 1], m = fmaxf(a, b);
  const float e0 = expf(a - m), e1 = expf(b - m), p0 = e0 / (e0 + e1), p1 = e1 / (e0 + e1);
  for (int c = threadIdx.x; c < C; c += blockDim.x) x[s * C + c] += moe[s * C + c] * p0 + mlp[s * C + c] * p1;
}
}  // namespace

void gather_rows(float* out, const float* x, const int32_t* index, int64_t n, int C, cudaStream_t stream) {
  if (n <= 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(out, x, index, C);
}

void combine_rows_add(float* x, const float* rows, const int32_t* row, const float* weight, int S, int k, int C,
                      cudaStream_t stream) {
  if (S <= 0) return;
  combine_rows_add_kernel<<<static_cast<unsigned>(S), kThreads, 0, stream>>>(x, rows, row, weight, k, C);
}

void moe_mix_residual(float* x, const float* moe, const float* mlp, const float* coef, int S, int C,
                      cudaStream_t stream) {
  if (S <= 0) return;
  moe_mix_residual_kernel<<<static_cast<unsigned>(S), kThreads, 0, stream>>>(x, moe, mlp, coef, C);
}

}  // namespace ds::cuda
