// The fold (see fold.h): tiles of 2048 elements on the stack, so `out` may alias a source and no call allocates.
// Serial on purpose: it runs on the communicators' worker threads, where an OpenMP team would fight the compute
// threads for the cores; a caller on the compute thread splits large ranges over OpenMP itself.
// Napkin: a k-way fold reads k·n and writes n elements; memory bound; the 16-bit widen/narrow are vectorised in
// core/convert.h's to_f32/from_f32, the combine loops vectorise as written.
#include "ds/comm/fold.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::comm {
namespace {

constexpr size_t kTile = 2048;

template <typename T>
T combine(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return a + b;
    case ReduceOp::max: return a < b ? b : a;
    case ReduceOp::min: return b < a ? b : a;
  }
  return a;
}

template <typename T>
void combine_tile(T* acc, const T* x, size_t len, ReduceOp op) {
  switch (op) {  // one loop per op, so each vectorises
    case ReduceOp::sum:
      for (size_t i = 0; i < len; ++i) acc[i] = acc[i] + x[i];
      return;
    case ReduceOp::max:
      for (size_t i = 0; i < len; ++i) acc[i] = combine(acc[i], x[i], ReduceOp::max);
      return;
    case ReduceOp::min:
      for (size_t i = 0; i < len; ++i) acc[i] = combine(acc[i], x[i], ReduceOp::min);
      return;
  }
}

// T is float or int32_t: combined as it is stored.
template <typename T>
void fold_native(void* out_bytes, const void* const* srcs, size_t k, size_t n, ReduceOp op) {
  alignas(64) T acc[kTile];
  T* out = static_cast<T*>(out_bytes);
  for (size_t b = 0; b < n; b += kTile) {
    const size_t len = std::min(kTile, n - b);
    std::memcpy(acc, static_cast<const T*>(srcs[0]) + b, len * sizeof(T));
    for (size_t s = 1; s < k; ++s) combine_tile(acc, static_cast<const T*>(srcs[s]) + b, len, op);
    std::memcpy(out + b, acc, len * sizeof(T));
  }
}

// f16 / bf16: widened to fp32, combined, rounded once.
void fold_half(void* out_bytes, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op) {
  alignas(64) float acc[kTile], x[kTile];
  auto* out = static_cast<uint16_t*>(out_bytes);
  for (size_t b = 0; b < n; b += kTile) {
    const size_t len = std::min(kTile, n - b);
    to_f32(acc, static_cast<const uint16_t*>(srcs[0]) + b, dtype, len);
    for (size_t s = 1; s < k; ++s) {
      to_f32(x, static_cast<const uint16_t*>(srcs[s]) + b, dtype, len);
      combine_tile(acc, x, len, op);
    }
    from_f32(out + b, acc, dtype, len);
  }
}

}  // namespace

void fold(void* out, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op) {
  DS_ASSERT(k >= 1, "a fold needs at least one source");
  switch (dtype) {
    case DType::f32: fold_native<float>(out, srcs, k, n, op); return;
    case DType::i32: fold_native<int32_t>(out, srcs, k, n, op); return;
    case DType::f16:
    case DType::bf16: fold_half(out, srcs, k, n, dtype, op); return;
    case DType::u8: break;  // bytes are not numbers (the communicator refuses to reduce them)
  }
  DS_ASSERT(false, "fold of an unknown dtype");
}

void fold_into(void* acc, const void* x, size_t n, DType dtype, ReduceOp op) {
  switch (dtype) {  // native types combine in place; 16-bit ones go through the fp32 tiles
    case DType::f32: combine_tile(static_cast<float*>(acc), static_cast<const float*>(x), n, op); return;
    case DType::i32: combine_tile(static_cast<int32_t*>(acc), static_cast<const int32_t*>(x), n, op); return;
    case DType::f16:
    case DType::bf16:
    case DType::u8: break;
  }
  const void* srcs[2] = {acc, x};
  fold(acc, srcs, 2, n, dtype, op);
}

void fold_f32_into(void* dst, DType dtype, const float* src, size_t n) {
  if (dtype == DType::f32) {
    combine_tile(static_cast<float*>(dst), src, n, ReduceOp::sum);
    return;
  }
  DS_ASSERT(dtype == DType::f16 || dtype == DType::bf16, "fold_f32_into a {} buffer", dtype_name(dtype));
  alignas(64) float acc[kTile];
  auto* d = static_cast<uint16_t*>(dst);
  for (size_t b = 0; b < n; b += kTile) {
    const size_t len = std::min(kTile, n - b);
    to_f32(acc, d + b, dtype, len);
    combine_tile(acc, src + b, len, ReduceOp::sum);
    from_f32(d + b, acc, dtype, len);
  }
}

}  // namespace ds::comm
