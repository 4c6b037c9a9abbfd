// The CUDA kernels of the ops layer (ops.h), callable without CUDA headers, so ops/ stays free of them: each
// launcher selects `device` (the tensors' GPU), queues its kernel on that device's default stream and checks the
// launch (DeviceError). In a build without CUDA, kernels/no_cuda.cpp defines them to throw DeviceError instead.
// Pointers are device memory. C++17 (the CUDA sources include it).
#pragma once

#include <cstdint>

#include "ds/kernels/adam_coeffs.h"

namespace ds::cuda {

// Over n floats: y = gelu(x) (tanh approximation, as the CPU's); dx = gelu'(x) * dy (dx may alias dy);
// out = a + b (out may alias a or b).
void gelu_forward(int device, float* y, const float* x, int64_t n);
void gelu_backward(int device, float* dx, const float* x, const float* dy, int64_t n);
void add(int device, float* out, const float* a, const float* b, int64_t n);

// One Adam/AdamW step over n fp32 elements by the CPU kernel's formula and coefficients (cpu::adam_coeffs):
//   g = grad * grad_scale + l2 * param; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   param = param - decay * param - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps).
void adamw_step(int device, float* param, const float* grad, float* m, float* v, int64_t n,
                const kernels::AdamCoeffs& k);

// Sum of x^2 over n floats in double: fixed 64K-element blocks (as the CPU's), each reduced on the GPU, then added
// in order on the host, so the result depends on n alone, not on the launch. Waits for the result.
double sum_squares(int device, const float* x, int64_t n);

}  // namespace ds::cuda
