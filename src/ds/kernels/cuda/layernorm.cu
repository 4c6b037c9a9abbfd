// Layer norm on the GPU: one block per row, two block reductions (mean, then variance around it, as the CPU).
#include "ds/kernels/cuda/kernels.h"
#include "ds/kernels/cuda/reduce.cuh"

namespace ds::cuda {
namespace {
constexpr int kThreads = 256;
constexpr float kLnEps = 1e-5f;  // as cpu::layernorm_forward

__global__ void layernorm_kernel(float* out, const float* inp, const int32_t* rows, const float* w, const float* b,
                                 int C) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* x = inp + int64_t(rows ? rows[r] : r) * C;
  float* o = out + r * C;
  float s = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float mean = block_sum(s, red) / C;
  float v = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[c] - mean;
    v += d * d;
  }
  const float rstd = 1.0f / sqrtf(block_sum(v, red) / C + kLnEps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = (x[c] - mean) * rstd * w[c] + b[c];
}
}  // namespace

void layernorm_rows(float* out, const float* inp, const int32_t* rows, const float* w, const float* b, int R, int C,
                    cudaStream_t stream) {
  layernorm_kernel<<<R, kThreads, 0, stream>>>(out, inp, rows, w, b, C);
}

}  // namespace ds::cuda
