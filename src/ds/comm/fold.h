// The one elementwise reduction of typed buffers: what every collective's sum/max/min does (local and MPI
// backends) and what ZeRO does when it adds gradients together. Decision: 16-bit floats (f16, bf16) are widened
// to fp32, combined in fp32 in operand order and rounded to 16 bits once at the end (round to nearest even);
// f32 and i32 combine natively. So a sum of W ranks' 16-bit gradients rounds once, not W-1 times, and a gradient
// kept in 16 bits is rounded once per addition of an fp32 contribution.
#pragma once

#include <cstddef>

#include "ds/comm/communicator.h"
#include "ds/core/dtype.h"

namespace ds::comm {

// out[i] = srcs[0][i] op srcs[1][i] op ... op srcs[k-1][i] for i < n, every buffer in `dtype`, folded left in
// source order. `out` may be one of the sources (each tile is read completely before it is written). k >= 1.
void fold(void* out, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);

// acc[i] = acc[i] op x[i]: the two-operand fold.
void fold_into(void* acc, const void* x, size_t n, DType dtype, ReduceOp op = ReduceOp::sum);

// dst[i] += src[i] with dst in `dtype` and src in fp32: a 16-bit dst is widened, summed in fp32 and rounded once.
void fold_f32_into(void* dst, DType dtype, const float* src, size_t n);

}  // namespace ds::comm
