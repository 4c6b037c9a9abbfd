// LAMB (kernels.h), DeepSpeed's FusedLamb per parameter tensor, in three passes a caller runs per parameter: the
// moments, the norms (the parameter's through sum_squares, the update's here), then the update scaled by the trust
// ratio. Plain loops, the square roots in scalar code; the sums go by fixed 64K-element blocks added in order, so a
// run is reproducible whatever the thread count. Napkin: moments read g, m, v and write m, v (20 B/element); the
// norm pass reads p, m, v (12 B); the apply pass reads p, m, v and writes p (16 B): memory bound, ~1.7x Adam's bytes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ds/kernels/cpu/kernels.h"

namespace ds::cpu {
namespace {

constexpr size_t kParallelMin = size_t{1} << 15;
constexpr size_t kSumBlock = size_t{1} << 16;

// eps inside or outside the square root is a template argument, so the loops below carry no branch and vectorize.
template <bool kEpsInside>
inline float lamb_update(float param, float m, float v, float eps, float weight_decay) {
  const float denom = kEpsInside ? std::sqrt(v + eps) : std::sqrt(v) + eps;
  return m / denom + weight_decay * param;
}

template <bool kEpsInside>
double update_sum_squares(const float* param, const float* m, const float* v, size_t n, float eps, float wd) {
  const size_t nblocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(nblocks);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t blk = 0; blk < nblocks; ++blk) {
    const size_t i0 = blk * kSumBlock, i1 = std::min(n, i0 + kSumBlock);
    double s = 0;
    for (size_t i = i0; i < i1; ++i) {
      const double u = lamb_update<kEpsInside>(param[i], m[i], v[i], eps, wd);
      s += u * u;
    }
    partial[blk] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

// No `simd` here: with math errno, compilers will not vectorize std::sqrt on request (Clang says so as a warning).
template <bool kEpsInside>
void apply(float* param, const float* m, const float* v, size_t n, float eps, float wd, float step) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) param[i] -= step * lamb_update<kEpsInside>(param[i], m[i], v[i], eps, wd);
}

}  // namespace

void lamb_moments(const float* grad, float* m, float* v, size_t n, const LambParams& p, float grad_scale) {
  const float b1 = p.beta1, b2 = p.beta2;
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
  }
}

double lamb_update_sum_squares(const float* param, const float* m, const float* v, size_t n, const LambParams& p) {
  return p.eps_inside_sqrt ? update_sum_squares<true>(param, m, v, n, p.eps, p.weight_decay)
                           : update_sum_squares<false>(param, m, v, n, p.eps, p.weight_decay);
}

float lamb_coefficient(double param_sum_squares, double update_sum_squares, const LambParams& p) {
  const double w = std::sqrt(param_sum_squares), u = std::sqrt(update_sum_squares);
  if (w == 0 || u == 0) return 1.0f;
  return std::clamp(static_cast<float>(w / u), p.min_coeff, p.max_coeff);
}

float lamb_step_size(const LambParams& p) {
  if (!p.bias_correction) return p.lr;
  const double t = static_cast<double>(p.step);
  const double bc1 = 1 - std::pow(double{p.beta1}, t), bc2 = 1 - std::pow(double{p.beta2}, t);
  return static_cast<float>(p.lr * std::sqrt(bc2) / bc1);
}

void lamb_apply(float* param, const float* m, const float* v, size_t n, const LambParams& p, float step) {
  if (p.eps_inside_sqrt) {
    apply<true>(param, m, v, n, p.eps, p.weight_decay, step);
  } else {
    apply<false>(param, m, v, n, p.eps, p.weight_decay, step);
  }
}

}  // namespace ds::cpu
