// `dspeed bench train`: our training step against PyTorch's (bench/torch_gpt.py) on the same GPT-2 shapes and
// thread count. Each measurement runs in its own child process (so peak RSS is per run), ours and PyTorch's
// interleaved, and medians are compared as ratios; the machine's cblas_sgemm rate is measured in the same run to
// express our achieved FLOP/s as a fraction of it.
#pragma once

#include <cstdint>
#include <string>

namespace ds {

struct TrainBenchShape {
  std::string preset;  // "tiny", "small", "gpt2" as in bench/torch_gpt.py
  int n_layer = 4, n_head = 4, n_embd = 128, vocab = 512, seq_len = 128, batch = 8;
  static TrainBenchShape from_preset(const std::string& name);
  // FLOPs of one training step: 3 x forward, counting matmuls and causal attention (QK^T and AV, lower triangle).
  double step_flops() const;
};

struct TrainBenchOnceResult {
  double median_step_ms = 0;
  double tokens_per_s = 0;
  double peak_rss_mb = 0;
  double peak_activation_mb = 0;  // the Ctx's activation arena (what checkpointing saves)
  double peak_workspace_mb = 0;   // its scratch arena (backward temporaries, a checkpointed block's first forward)
  double loss_first = 0, loss_last = 0;
};

// One measurement in this process: random tokens, AdamW lr 3e-4 (0.9, 0.95) wd 0.1, as torch_gpt.py; with
// `checkpoint`, every transformer block is activation-checkpointed.
TrainBenchOnceResult run_train_bench_once(const TrainBenchShape& shape, int steps, int warmup, int threads,
                                          bool checkpoint = false);

struct TrainBenchOptions {
  std::string preset = "tiny";
  int steps = 20;
  int warmup = 3;
  int threads = 2;
  int reps = 3;
  std::string self_exe;                       // path of dspeed, to run our measurements as children
  std::string python = "/usr/bin/python3";
  std::string torch_script = "bench/torch_gpt.py";
  bool skip_torch = false;
  bool checkpoint_activations = false;        // our runs checkpoint every transformer block
  // Instead of PyTorch, compare our step without and with activation checkpointing (interleaved): step time and
  // peak activation memory.
  bool compare_checkpointing = false;
  std::string json_out;                       // append a JSON line with the figures
};

// Runs the interleaved comparison and prints a table; returns the JSON summary line.
std::string run_train_bench_compare(const TrainBenchOptions& options);

// Median GFLOP/s of cblas_sgemm at M x N x K with the current thread count.
double measure_sgemm_gflops(int M, int N, int K, int reps);

}  // namespace ds
