// `dspeed bench decode`: single-stream greedy decoding through our engine beside a PyTorch KV-cached decode of the
// same weights and the same prompt (bench/torch_decode.py, Debian's python3-torch), in one run. Ours is measured
// before and after PyTorch's (the machines are shared and noisy) and the median is shown; the generated tokens
// of the two must agree, which also checks the engine against an independent implementation.
#pragma once

#include <cstdint>
#include <string>

namespace ds::inference {

struct DecodeBenchOptions {
  std::string model;  // a checkpoint directory or a safetensors file
  std::string arch;
  int prompt_tokens = 32;
  int new_tokens = 128;
  int repeats = 5;
  int threads = 2;
  uint64_t seed = 1234;
  std::string python = "/usr/bin/python3";
  std::string torch_script = "bench/torch_decode.py";
  bool skip_torch = false;
  std::string device = "cpu";  // ours and PyTorch's: cpu, or cuda (the first GPU)
  std::string weights = "fp32";  // ours on the CPU: fp32 or bf16 (PyTorch's stay fp32)
};

struct DecodeBenchResult {
  double ours_decode_tokens_per_s = 0, ours_prefill_tokens_per_s = 0;
  double torch_decode_tokens_per_s = 0, torch_prefill_tokens_per_s = 0;  // 0 when skipped
  bool tokens_agree = false;
  size_t agreeing_prefix = 0;  // leading generated tokens that agree
};

DecodeBenchResult run_decode_bench(const DecodeBenchOptions& options);

}  // namespace ds::inference
