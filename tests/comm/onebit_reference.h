// A plain reference for the 1-bit all-reduce (comm/onebit.h), shared by the local and MPI tests: DeepSpeed's
// compressed_allreduce for every rank at once, one tensor at a time, with signs as floats and no packing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "ds/core/rng.h"

namespace ds::test {

inline float sgn(float x) { return x >= 0 ? 1.0f : -1.0f; }  // DeepSpeed's sign().add_(1).bool(): 0 counts as +1

inline std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.normal();
  return v;
}

// DeepSpeed's compressed_allreduce for every rank at once, one tensor at a time, signs as floats: with
// scale_block 0 its own scales (the worker's per tensor, the server's per chunk), else one scale per block of
// scale_block elements of each chunk in both.
class ReferenceOneBit {
 public:
  ReferenceOneBit(int world, std::vector<int64_t> sizes, int64_t scale_block = 0)
      : W_(world), block_(scale_block), sizes_(std::move(sizes)) {
    const int64_t multiple = int64_t(W_) * std::lcm(int64_t(W_), int64_t(8));
    for (const int64_t n : sizes_) {
      const int64_t p = (n + multiple - 1) / multiple * multiple;
      padded_.push_back(p);
      worker_error_.emplace_back(static_cast<size_t>(W_), std::vector<float>(static_cast<size_t>(p)));
      server_error_.emplace_back(static_cast<size_t>(W_), std::vector<float>(static_cast<size_t>(p / W_)));
    }
  }
  // inputs[w]: rank w's buffer; returns the result every rank ends with.
  std::vector<float> run(const std::vector<std::vector<float>>& inputs) {
    std::vector<float> result;
    int64_t offset = 0;
    for (size_t t = 0; t < sizes_.size(); ++t) {
      const int64_t n = sizes_[t], p = padded_[t], c = p / W_;
      std::vector<std::vector<float>> q(static_cast<size_t>(W_));  // each worker's scale * sign
      for (int w = 0; w < W_; ++w) {
        std::vector<float> b(static_cast<size_t>(p), 0.0f);
        for (int64_t i = 0; i < n; ++i) b[i] = inputs[w][offset + i];
        auto& err = worker_error_[t][w];
        for (int64_t i = 0; i < p; ++i) b[i] += err[i];
        q[w].resize(static_cast<size_t>(p));
        if (block_ == 0) {
          compress(b.data(), err.data(), q[w].data(), p, p);
        } else {  // block by block within each chunk
          for (int r = 0; r < W_; ++r) compress(b.data() + r * c, err.data() + r * c, q[w].data() + r * c, c, block_);
        }
      }
      std::vector<float> out(static_cast<size_t>(p));
      for (int r = 0; r < W_; ++r) {  // server r
        std::vector<float> s(static_cast<size_t>(c), 0.0f);
        for (int w = 0; w < W_; ++w)
          for (int64_t i = 0; i < c; ++i) s[i] += sgn(q[w][r * c + i]) * (std::fabs(q[w][r * c + i]) / W_);
        auto& err = server_error_[t][r];
        for (int64_t i = 0; i < c; ++i) s[i] += err[i];
        compress(s.data(), err.data(), out.data() + r * c, c, block_ == 0 ? c : block_);
      }
      result.insert(result.end(), out.begin(), out.begin() + n);
      offset += n;
    }
    return result;
  }

 private:
  // q = scale * sign(x) per block of x's n elements; err = x - q.
  static void compress(const float* x, float* err, float* q, int64_t n, int64_t block) {
    for (int64_t b = 0; b < n; b += block) {
      const int64_t e = std::min(n, b + block);
      double sq = 0;
      for (int64_t i = b; i < e; ++i) sq += double(x[i]) * x[i];
      const auto scale = static_cast<float>(std::sqrt(sq / double(e - b)));
      for (int64_t i = b; i < e; ++i) {
        q[i] = scale * sgn(x[i]);
        err[i] = x[i] - q[i];
      }
    }
  }
  int W_;
  int64_t block_;
  std::vector<int64_t> sizes_, padded_;
  std::vector<std::vector<std::vector<float>>> worker_error_, server_error_;  // [tensor][rank][element]
};

}  // namespace ds::test
