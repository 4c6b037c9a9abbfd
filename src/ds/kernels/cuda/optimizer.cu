// The optimizer's kernels on the GPU (launch.h): Adam/AdamW with the CPU kernel's coefficients and operation order,
// one element per thread in a grid-stride loop (memory-bound: 16 bytes read and 12 written per element), and the
// sum of squares of the gradient norm over fixed 64K-element blocks, as the CPU sums, so that the result does not
// depend on how the work was launched.
#include <algorithm>
#include <climits>
#include <memory>
#include <vector>

#include "ds/core/memory.h"
#include "ds/kernels/cuda/cuda_check.h"
#include "ds/kernels/cuda/launch.h"

namespace ds::cuda {
namespace {
constexpr int kThreads = 256;
constexpr int64_t kSumBlock = int64_t{1} << 16;  // elements per partial sum (the CPU's kSumBlock)

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, kernels::AdamCoeffs k) {
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

// Block b sums x^2 over elements [b * kSumBlock, (b + 1) * kSumBlock) into partial[b].
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  __shared__ double lane[kThreads];
  const int64_t begin = int64_t(blockIdx.x) * kSumBlock;
  const int64_t end = begin + kSumBlock < n ? begin + kSumBlock : n;
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += double(x[i]) * double(x[i]);
  lane[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) lane[threadIdx.x] += lane[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = lane[0];
}
}  // namespace

void adamw_step(int device, float* param, const float* grad, float* m, float* v, int64_t n,
                const kernels::AdamCoeffs& k) {
  if (n <= 0) return;
  DS_CUDA_CHECK(cudaSetDevice(device));
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  adamw_kernel<<<blocks, kThreads>>>(param, grad, m, v, n, k);
  DS_CUDA_CHECK(cudaGetLastError());
}

double sum_squares(int device, const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  DS_CUDA_CHECK(cudaSetDevice(device));
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  DS_CHECK_AS(DeviceError, blocks <= INT32_MAX, "[cuda] sum_squares over {} elements: more than 2^31 blocks", n);
  const std::shared_ptr<Storage> partial = allocate_storage(int64_t(sizeof(double)) * blocks, Category::workspace,
                                                            Tier::device, Device::cuda(device));
  std::vector<double> host(static_cast<size_t>(blocks));
  sum_squares_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(x, n, static_cast<double*>(partial->data()));
  DS_CUDA_CHECK(cudaGetLastError());
  DS_CUDA_CHECK(cudaMemcpy(host.data(), partial->data(), sizeof(double) * host.size(), cudaMemcpyDeviceToHost));
  double total = 0;
  for (const double p : host) total += p;  // in block order
  return total;
}

}  // namespace ds::cuda
