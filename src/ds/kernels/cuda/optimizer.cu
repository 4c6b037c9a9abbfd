// The optimizer's kernels on the GPU: Adam/AdamW with the CPU kernel's coefficients, one element per thread in a
// grid-stride loop (memory-bound: 16 bytes read and 12 written per element), and the sum of squares of the gradient
// norm: per-block double partial sums, added on the host (at most 1024 blocks).
#include <algorithm>
#include <vector>

#include "ds/kernels/cuda/cuda_check.h"
#include "ds/kernels/cuda/kernels.h"

namespace ds::cuda {
namespace {
constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

int blocks_for(int64_t n, int cap) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, cap)); }

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamCoeffs k) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float p0 = param[i];
    const float g = fmaf(k.l2, p0, grad[i] * k.grad_scale);
    const float mi = fmaf(k.b1, m[i], k.one_minus_b1 * g);
    const float vi = fmaf(k.b2, v[i], k.one_minus_b2 * g * g);
    m[i] = mi;
    v[i] = vi;
    const float denom = fmaf(sqrtf(vi), k.inv_sqrt_bc2, k.eps);
    param[i] = fmaf(-k.step_size, mi / denom, fmaf(-k.decay, p0, p0));
  }
}

__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  __shared__ double lane[kThreads];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += double(x[i]) * double(x[i]);
  lane[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) lane[threadIdx.x] += lane[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = lane[0];
}
}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const AdamCoeffs& k,
                cudaStream_t stream) {
  if (n > 0) adamw_kernel<<<blocks_for(n, 4096), kThreads, 0, stream>>>(param, grad, m, v, n, k);
}

double sum_squares(const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return 0.0;
  const int blocks = blocks_for(n, kMaxBlocks);
  double* partial = nullptr;
  DS_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), sizeof(double) * blocks, stream));
  sum_squares_kernel<<<blocks, kThreads, 0, stream>>>(x, n, partial);
  std::vector<double> host(static_cast<size_t>(blocks));
  const cudaError_t copied =
      cudaMemcpyAsync(host.data(), partial, sizeof(double) * blocks, cudaMemcpyDeviceToHost, stream);
  cudaFreeAsync(partial, stream);
  DS_CUDA_CHECK(copied);
  DS_CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0;
  for (const double p : host) total += p;
  return total;
}

}  // namespace ds::cuda
