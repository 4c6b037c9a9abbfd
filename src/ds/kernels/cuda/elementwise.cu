// Element-wise kernels on the GPU: the ops layer's GELU and sums, and the epilogues of the inference GEMMs (bias,
// bias + GELU, bias + residual). Grid-stride loops over at most 4096 blocks of 256 threads; memory-bound.
#include <algorithm>

#include "ds/kernels/cuda/cuda_check.h"
#include "ds/kernels/cuda/kernels.h"
#include "ds/kernels/cuda/launch.h"

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
// s = sigmoid(2u) = 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3): gelu(x) = x s and
// gelu'(x) = s + 2 x s (1 - s) du/dx, as the CPU kernels compute them.
__device__ float gelu_s(float x) {
  const float u = 0.7978845608028654f * x * (1.0f + 0.044715f * x * x);
  return 1.0f / (1.0f + expf(-2.0f * u));
}

__global__ void gelu_forward_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] * gelu_s(x[i]);
}

__global__ void gelu_backward_kernel(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i], s = gelu_s(v);
    const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * v * v);
    dx[i] = (s + 2.0f * v * s * (1.0f - s) * du) * dy[i];
  }
}

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}
}  // namespace

void gelu_forward(int device, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  DS_CUDA_CHECK(cudaSetDevice(device));
  gelu_forward_kernel<<<blocks_for(n), kThreads>>>(y, x, n);
  DS_CUDA_CHECK(cudaGetLastError());
}

void gelu_backward(int device, float* dx, const float* x, const float* dy, int64_t n) {
  if (n <= 0) return;
  DS_CUDA_CHECK(cudaSetDevice(device));
  gelu_backward_kernel<<<blocks_for(n), kThreads>>>(dx, x, dy, n);
  DS_CUDA_CHECK(cudaGetLastError());
}

void add(int device, float* out, const float* a, const float* b, int64_t n) {
  if (n <= 0) return;
  DS_CUDA_CHECK(cudaSetDevice(device));
  add_kernel<<<blocks_for(n), kThreads>>>(out, a, b, n);
  DS_CUDA_CHECK(cudaGetLastError());
}

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
