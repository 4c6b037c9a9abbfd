// Deterministic random numbers that do not depend on the standard library's distributions (which differ
// between implementations): splitmix64 for seeding and uniform bits, Box-Muller for normals.
#pragma once

#include <cstdint>

namespace ds {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  // Uniform in [0, 1) with 24 random bits.
  float uniform();
  // Standard normal.
  float normal();
  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
  bool has_spare_ = false;
  float spare_ = 0.0f;
};

}  // namespace ds
