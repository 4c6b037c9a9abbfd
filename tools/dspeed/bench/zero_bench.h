// `dspeed bench zero`: the ZeRO stages measured against the ZeRO paper's formulas. For each world size N and
// stage, a child job (`mpirun -np N dspeed bench zero-once`, or one plain process for N = 1) trains random tokens
// on an Engine and every rank prints one RESULT line: tracked model-state peaks, comm buffers, peak RSS, median step
// time and bytes sent per step. The parent prints measured beside formula (memory 16Ψ, 8Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N
// bytes for fp32 Adam; traffic 2Ψ(N-1)/N or 3Ψ(N-1)/N elements) and the two targets: stage-3 peak RSS and
// stage 1-2 step time, each against stage 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds {

struct ZeroBenchOnceOptions {
  std::string model = "gpt2";  // a Gpt2Config preset or model JSON file
  int stage = 0;
  int steps = 3;
  int warmup = 1;
  int seq_len = 256;
  int micro = 1;                         // train_micro_batch_size_per_gpu (gas is 1)
  int threads = 0;                       // OpenMP threads per rank; 0: the cores divided by the world size
  std::string overlap_comm = "default";  // "default" (DeepSpeed's: on for stage 3 only), "true" or "false"
  std::string zero_extra;                // JSON object of further zero_optimization keys (e.g. stage-3 knobs)
  std::string backend = "auto";          // world communicator (comm_factory.h)
  uint64_t seed = 1234;
};

// What one rank measured. Bytes are tracked peaks of the device tier unless named host.
struct ZeroBenchRankResult {
  int rank = 0, world = 1, stage = 0;
  int64_t psi = 0;  // parameters of the model (unpadded)
  int64_t peak_param = 0, peak_grad = 0, peak_optimizer = 0;
  int64_t peak_comm_buffer = 0;       // device tier (ZeRO buckets, receive and gather buffers)
  int64_t peak_comm_buffer_host = 0;  // host tier (the communicator's staging copies)
  int64_t peak_activation = 0;
  double peak_rss_mib = 0;
  double init_s = 0;          // engine construction
  double median_step_s = 0;   // over the timed steps (after warmup)
  double bytes_per_step = 0;  // ring-convention bytes this rank sent, per timed step (Note [Traffic accounting])
  double loss_first = 0, loss_last = 0;

  int64_t model_states() const { return peak_param + peak_grad + peak_optimizer; }
  std::string to_json() const;
  static ZeroBenchRankResult from_json(const std::string& text);
};

// One rank of one measurement in this process (collective: every rank of the world calls it). On an error the
// world is aborted so no peer hangs, then the error is rethrown.
ZeroBenchRankResult run_zero_bench_once(const ZeroBenchOnceOptions& options);

// The ZeRO paper's per-rank model-state bytes for fp32 Adam (4-byte params and grads, 8 bytes of Adam state).
double zero_memory_formula_bytes(int stage, double psi, int world);
// Ring-convention bytes sent per rank per step: 2Ψ(N-1)/N elements (stages 0-2), 3Ψ(N-1)/N (stage 3), x 4 bytes.
double zero_traffic_formula_bytes(int stage, double psi, int world);

struct ZeroBenchOptions {
  std::string model = "gpt2";
  std::vector<int> worlds = {1, 2, 4};
  std::vector<int> stages = {0, 1, 2, 3};
  int steps = 3;
  int warmup = 1;
  int seq_len = 256;
  int micro = 1;
  int threads = 0;  // per rank; 0: max(1, cores / N)
  int reps = 1;     // interleaved repetitions of the grid; step time and RSS are medians over them
  std::string overlap_comm = "default";
  std::string zero_extra;         // as ZeroBenchOnceOptions::zero_extra, for every run
  std::string self_exe;           // path of dspeed, run as the children
  std::string mpirun = "mpirun";  // used for N > 1
  int child_timeout_s = 1800;     // per child job
  std::string json_out;           // append the final RESULT line here
};

// Runs the grid, prints the table, the two targets and a final "RESULT {json}" line; returns that JSON. Throws
// after printing everything when any child failed (each failure is reported with its stderr tail).
std::string run_zero_bench(const ZeroBenchOptions& options);

}  // namespace ds
