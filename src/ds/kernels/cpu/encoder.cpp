// Token + position embedding, forward and backward.
// Backward is deterministic without atomics: dwpe is parallel over positions (batch summed in order); dwte sorts
// the (token, position) pairs, then each distinct token's rows are summed in position order by one thread, so the
// result is the same for any thread count. Token ids are checked to be >= 0 (V is not known here).
// Napkin: forward reads 8 B and writes 4 B per output element; backward reads 4 B and read-modify-writes 8 B;
// GPT-2 124M (B*T=1024, C=768) is ~3 MB a tensor: memory bound, measured 0.15/0.17 ms on one core.
#include <algorithm>
#include <vector>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::cpu {
namespace {
constexpr size_t kParallelMin = size_t{1} << 15;
}  // namespace

void encoder_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int B, int T, int C) {
  const int N = B * T;
  for (int i = 0; i < N; ++i) {
    DS_CHECK(inp[i] >= 0, "[kernels] encoder_forward: token id {} at row {} is negative", inp[i], i);
  }
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int i = 0; i < N; ++i) {
    const float* e = wte + size_t(inp[i]) * C;
    const float* p = wpe + size_t(i % T) * C;
    float* o = out + size_t(i) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

void encoder_forward_rows(float* out, const float* rows, const float* wpe, int B, int T, int C) {
  const int N = B * T;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int i = 0; i < N; ++i) {
    const float* e = rows + size_t(i) * C;
    const float* p = wpe + size_t(i % T) * C;
    float* o = out + size_t(i) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* inp, int B, int T, int C) {
  const int N = B * T;
  const bool parallel = size_t(N) * C >= kParallelMin;

  if (dwpe) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int t = 0; t < T; ++t) {
      float* dp = dwpe + size_t(t) * C;
      for (int b = 0; b < B; ++b) {
        const float* g = dout + (size_t(b) * T + t) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) dp[c] += g[c];
      }
    }
  }

  if (dwte) {
    // key = token << 32 | position: sorting groups each token's rows in position order.
    std::vector<uint64_t> keys(N);
    for (int i = 0; i < N; ++i) {
      DS_CHECK(inp[i] >= 0, "[kernels] encoder_backward: token id {} at row {} is negative", inp[i], i);
      keys[i] = (uint64_t(uint32_t(inp[i])) << 32) | uint32_t(i);
    }
    std::sort(keys.begin(), keys.end());
    std::vector<int> starts;
    starts.reserve(N + 1);
    for (int i = 0; i < N; ++i)
      if (i == 0 || (keys[i] >> 32) != (keys[i - 1] >> 32)) starts.push_back(i);
    starts.push_back(N);
    const int ngroups = int(starts.size()) - 1;
#pragma omp parallel for schedule(dynamic, 16) if (parallel)
    for (int gi = 0; gi < ngroups; ++gi) {
      float* dw = dwte + size_t(keys[starts[gi]] >> 32) * C;
      for (int j = starts[gi]; j < starts[gi + 1]; ++j) {
        const float* g = dout + size_t(uint32_t(keys[j])) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) dw[c] += g[c];
      }
    }
  }
}

}  // namespace ds::cpu
