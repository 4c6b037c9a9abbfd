// Element-wise epilogues of the GEMMs on the GPU: bias, bias + GELU, bias + residual. Grid-stride loops over at
// most 4096 blocks of 256 threads; memory-bound (one read and one write of y per element).
#include <algorithm>

#include "ds/kernels/cuda/kernels.h"

namespace ds::cuda {
namespace {
constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096)); }

__global__ void bias_kernel(float* y, const float* b, int64_t n, int M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % M];
}

// GPT-2's tanh GELU on y + b.
__global__ void bias_gelu_kernel(float* y, const float* b, int64_t n, int M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = y[i] + b[i % M];
    y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  }
}

// x += y + b (the residual after a projection).
__global__ void bias_residual_kernel(float* x, const float* y, const float* b, int64_t n, int M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i] + b[i % M];
}
}  // namespace

void add_bias(float* y, const float* b, int64_t n, int M, cudaStream_t stream) {
  bias_kernel<<<blocks_for(n), kThreads, 0, stream>>>(y, b, n, M);
}

void add_bias_gelu(float* y, const float* b, int64_t n, int M, cudaStream_t stream) {
  bias_gelu_kernel<<<blocks_for(n), kThreads, 0, stream>>>(y, b, n, M);
}

void add_bias_residual(float* x, const float* y, const float* b, int64_t n, int M, cudaStream_t stream) {
  bias_residual_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, b, n, M);
}

}  // namespace ds::cuda
