// Row gathers and weighted row sums: the data movement of MoE dispatch and combine (nn/moe.cpp). Memory-bound:
// each reads and writes C floats per row; rows are independent, so they are split over OpenMP threads (a row of
// the output is written by one thread).
#include <cstring>

#include "ds/kernels/cpu/kernels.h"

namespace ds::cpu {

void gather_rows(float* out, const float* x, const int32_t* index, int64_t n, int64_t C) {
#pragma omp parallel for schedule(static) if (n * C > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float* o = out + i * C;
    if (index[i] < 0) {
      std::memset(o, 0, sizeof(float) * static_cast<size_t>(C));
    } else {
      std::memcpy(o, x + int64_t(index[i]) * C, sizeof(float) * static_cast<size_t>(C));
    }
  }
}

void combine_rows(float* out, const float* y, const int32_t* row, const float* weight, int64_t S, int k, int64_t C) {
#pragma omp parallel for schedule(static) if (S * C > 65536)
  for (int64_t s = 0; s < S; ++s) {
    float* o = out + s * C;
    std::memset(o, 0, sizeof(float) * static_cast<size_t>(C));
    for (int j = 0; j < k; ++j) {
      const int64_t a = s * k + j;
      if (row[a] < 0) continue;
      const float w = weight ? weight[a] : 1.0f;
      const float* src = y + int64_t(row[a]) * C;
      for (int64_t c = 0; c < C; ++c) o[c] += w * src[c];
    }
  }
}

void combine_rows_backward(float* dy, float* dweight, const float* dout, const float* y, const int32_t* row,
                           const float* weight, int64_t S, int k, int64_t C) {
#pragma omp parallel for schedule(static) if (S * C > 65536)
  for (int64_t s = 0; s < S; ++s) {
    const float* g = dout + s * C;
    for (int j = 0; j < k; ++j) {
      const int64_t a = s * k + j;
      if (row[a] < 0) {
        dweight[a] = 0.0f;
        continue;
      }
      const float* src = y + int64_t(row[a]) * C;
      float* d = dy + int64_t(row[a]) * C;
      const float w = weight[a];
      float dot = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        dot += g[c] * src[c];
        d[c] = w * g[c];
      }
      dweight[a] = dot;
    }
  }
}

}  // namespace ds::cpu
