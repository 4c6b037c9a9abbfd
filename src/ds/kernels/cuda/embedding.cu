// Token + position embedding on the GPU: one block of kThreads per token, reading one row of each table.
#include "ds/kernels/cuda/kernels.h"

namespace ds::cuda {
namespace {
constexpr int kThreads = 256;

__global__ void embed_kernel(float* x, const int32_t* ids, const int32_t* pos, const float* wte, const float* wpe,
                             int C) {
  const int64_t i = blockIdx.x;
  const float* te = wte + int64_t(ids[i]) * C;
  const float* pe = wpe + int64_t(pos[i]) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) x[i * C + c] = te[c] + pe[c];
}
}  // namespace

void embed_tokens(float* x, const int32_t* ids, const int32_t* pos, const float* wte, const float* wpe, int N, int C,
                  cudaStream_t stream) {
  embed_kernel<<<N, kThreads, 0, stream>>>(x, ids, pos, wte, wpe, C);
}

}  // namespace ds::cuda
