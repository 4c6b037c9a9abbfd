// The per-call scalars of one Adam/AdamW step, computed once on the host (cpu::adam_coeffs) and used by every
// backend's kernel, so the CPU and the GPU step by the same numbers. C++17 (CUDA sources include it).
#pragma once

namespace ds::kernels {

struct AdamCoeffs {
  float b1, one_minus_b1, b2, one_minus_b2, eps;
  float step_size;     // lr / bc1
  float inv_sqrt_bc2;  // 1 / sqrt(bc2)
  float decay;         // lr * weight_decay (AdamW mode), else 0
  float l2;            // weight_decay (Adam mode), else 0
  float grad_scale;
};

}  // namespace ds::kernels
