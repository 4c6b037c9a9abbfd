// `dspeed bench moe`: the MoE layer's cost against a dense MLP on the same tokens, in one process with the variants
// interleaved (medians of --repeats rounds). The dense MLP (C -> 4C -> C) does the work of one expert per token:
// top-1's active FLOPs, half of top-2's. Reported: top-1 and top-2 at capacity factor 1.0 over the dense time
// (targets 1.3x and 2.4x: gate, dispatch and combine may cost 30% / 20% over the experts' GEMMs), and the dropless
// path over capacity-based routing at capacity factor 1.25 (target 1.1x: no padding rows, variable groups).
#pragma once

#include <string>

namespace ds {

struct MoeBenchOptions {
  int tokens = 2048;   // S: one micro-batch's tokens (b x s)
  int width = 512;     // C
  int experts = 8;     // E
  int repeats = 7;
  int threads = 0;     // 0: OpenMP's default
  uint64_t seed = 1234;
  std::string json_out;
};

// Prints the table and the targets, and a final RESULT line; returns the result JSON.
std::string run_moe_bench(const MoeBenchOptions& options);

}  // namespace ds
