// 16-bit storage conversions (round to nearest even; NaN stays NaN, inf stays inf). They belong to the dtypes,
// so Tensor::copy_from converts without reaching into the kernels; kernels/cpu/kernels.h re-exports them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ds/core/dtype.h"

namespace ds {

void f32_to_bf16(uint16_t* out, const float* in, size_t n);
void bf16_to_f32(float* out, const uint16_t* in, size_t n);
void f32_to_f16(uint16_t* out, const float* in, size_t n);
void f16_to_f32(float* out, const uint16_t* in, size_t n);
// The same chosen by storage dtype: f32 is a copy, bf16 and f16 convert (any other dtype is an internal error).
void to_f32(float* out, const void* in, DType dtype, size_t n);
void from_f32(void* out, const float* in, DType dtype, size_t n);

}  // namespace ds
