// `dspeed bench compression`: the step time of each compressed optimizer against its uncompressed baseline on a
// throttled network (comm/throttle.h): `--world` ranks as threads of this process, each rank's link limited to
// `--network` (default 1 Gbit/s, 100 us). Variants: Adam (AdamW without bias correction, the exact stage of both
// compressed optimizers), OneBitAdam with freeze_step = --warmup, and ZeroOneAdam with var_freeze_step = --warmup
// (DeepSpeed's other defaults); and ZeRO-3 against ZeRO++ (qwZ, hpZ over --node-size ranks, qgZ), both with
// AdamW. The first --warmup steps of each are not timed, so the timed steps are compressed ones. Links within a node
// (--node-size consecutive ranks) are not throttled. Reported per variant: median step time, bytes sent per step
// over the world (a node's own groups excluded), modelled link seconds per step, and the speed-up over its baseline
// (target: OneBitAdam >= 2x Adam on GPT-2 124M at 1 Gbit/s).
#pragma once

#include <cstdint>
#include <string>

namespace ds {

struct CompressionBenchOptions {
  std::string model = "gpt2";
  int world = 4;
  int node_size = 2;  // ranks per node
  std::string network = "1gbit,100us";
  int seq_len = 64;
  int micro = 1;
  int warmup = 2;
  int steps = 3;
  uint64_t seed = 1234;
  std::string json_out;
};

// Prints the table and the target, and a final RESULT line; returns the result JSON.
std::string run_compression_bench(const CompressionBenchOptions& options);

}  // namespace ds
