// Adam/AdamW over a flat fp32 parameter buffer (DeepSpeed CPU-Adam semantics, kernels.h adamw_step): the first
// and second moments are flat buffers of the same length, accounted as `optimizer` memory. Working on the
// flat buffer, not per parameter, is what lets ZeRO hand each rank one contiguous partition later.
#pragma once

#include "ds/core/tensor.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::optim {

class AdamW {
 public:
  // params and grads are flat f32 tensors of equal length (a whole model, or one rank's partition).
  AdamW(Tensor params, Tensor grads, const cpu::AdamParams& hyper);
  // One step at learning rate `lr`; gradients are multiplied by grad_scale first (unscaling and clipping in one
  // pass, as DeepSpeed's unscale_and_clip_grads).
  void step(float lr, float grad_scale = 1.0f);
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  const cpu::AdamParams& hyper() const { return hyper_; }
  Tensor& exp_avg() { return m_; }
  Tensor& exp_avg_sq() { return v_; }

 private:
  Tensor params_, grads_, m_, v_;
  cpu::AdamParams hyper_;
  int64_t step_ = 0;
};

// sqrt(sum g^2) over a flat gradient buffer, accumulated in double.
double grad_norm(const Tensor& grads);
// DeepSpeed's clipping factor: gradients are multiplied by the returned value (<= 1). With max_norm <= 0
// clipping is off and the factor is 1. clip = (norm + 1e-6) / max_norm; factor = 1 / max(clip, 1).
float clip_factor(double norm, double max_norm);

}  // namespace ds::optim
