// `dspeed bench pipeline`: the pipeline schedules' bubbles measured against their formulas. For each schedule
// (1F1B, ZB-H1), number of stages p and micro-batches m, a child job (`mpirun -np p dspeed bench pipeline-once`)
// runs the engine's pipeline executor over p processes on stages whose passes take fixed times (F, B and W of
// --pass-ms each; 1F1B's backward B+W), so ranks that share the cores still keep their timings: a pass sleeps
// rather than computes, and what the bench measures is the schedule and the executor (activations really travel
// between the processes). Every rank prints its busy time (in passes) and the step's wall time; the idle time is
// the rest, time spent waiting for a peer. The parent prints the measured bubble, sum of idle / (p * wall), beside
// the formula: (p-1)/(m+p-1) for 1F1B and (p-1)/(3m+p-1) for ZB-H1 (whose bubble is (p-1)/(3m) of the busy time).
#pragma once

#include <string>
#include <vector>

namespace ds {

struct PipelineBenchOnceOptions {
  std::string schedule = "1f1b";
  int micro_batches = 8;
  double pass_ms = 100;  // each of F, B and W
  int steps = 3;
  int warmup = 1;
  int width = 64;       // activation width sent between stages (b·s = 16 rows)
};

// One rank of one measurement (collective over the MPI world, whose ranks are the stages). Returns the RESULT json.
std::string run_pipeline_bench_once(const PipelineBenchOnceOptions& options);

struct PipelineBenchOptions {
  std::vector<int> stages = {2, 4};
  std::vector<int> micro_batches = {4, 8, 16};
  std::vector<std::string> schedules = {"1f1b", "zb-h1"};
  double pass_ms = 100;
  int steps = 3;
  int warmup = 1;
  std::string self_exe;
  std::string mpirun = "mpirun";
  int child_timeout_s = 300;
  std::string json_out;
};

// Runs the grid, prints the table and the two targets (each measured bubble within 10% of its formula; ZB-H1 below
// 1F1B at every (p, m)) and a final RESULT line; throws after printing when a child failed.
std::string run_pipeline_bench(const PipelineBenchOptions& options);

}  // namespace ds
