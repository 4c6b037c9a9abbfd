// AdamW state and step; gradient norm and clipping factor.
#include "ds/optim/adamw.h"

#include <cmath>

namespace ds::optim {

AdamW::AdamW(Tensor params, Tensor grads, const cpu::AdamParams& hyper)
    : params_(std::move(params)), grads_(std::move(grads)), hyper_(hyper) {
  DS_ASSERT(params_.numel() == grads_.numel(), "params {} vs grads {}", params_.str(), grads_.str());
  m_ = Tensor::zeros(params_.shape(), DType::f32, Category::optimizer);
  v_ = Tensor::zeros(params_.shape(), DType::f32, Category::optimizer);
}

void AdamW::step(float lr, float grad_scale) {
  ++step_;
  cpu::AdamParams p = hyper_;
  p.lr = lr;
  p.step = step_;
  cpu::adamw_step(params_.data<float>(), grads_.data<float>(), m_.data<float>(), v_.data<float>(),
                  static_cast<size_t>(params_.numel()), p, grad_scale);
}

double grad_norm(const Tensor& grads) {
  return std::sqrt(cpu::sum_squares(grads.data<float>(), static_cast<size_t>(grads.numel())));
}

float clip_factor(double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0f;
  const double clip = (norm + 1e-6) / max_norm;
  return clip > 1.0 ? static_cast<float>(1.0 / clip) : 1.0f;
}

}  // namespace ds::optim
