// Pipeline schedules (DESIGN decision 8): the order in which each stage runs the forward and backward passes of the
// micro-batches of one training step, compiled once into a per-stage instruction list that the engine's executor
// runs, as DeepSpeed's TrainSchedule does. Two schedules:
//   1F1B (DeepSpeed's, PipeDream-flush): each stage runs a few forwards, then alternates one backward and one
//     forward, then drains; at most p - s micro-batches are in flight on stage s. Bubble (p-1)/(m+p-1) of a step.
//   ZB-H1 (zero bubble, Qi et al. 2023; DeepSpeed has none): each backward is split into B (input gradients, which
//     the previous stage waits for) and W (weight gradients, which nobody waits for); W passes fill the bubbles.
//     With F, B and W of equal length the bubble is (p-1) of 3m + p - 1 time units: a third of 1F1B's.
// Note [Pipeline schedules] in schedule.cpp says how the orders are made.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::pipe {

enum class Op : uint8_t {
  forward,          // F: receive the activation (not on the first stage), run the stage, send it on
  backward,         // B+W: receive the output gradient (not on the last stage), run the stage's whole backward
  backward_input,   // B: the input gradients only, sent to the previous stage; the weight gradients are queued
  backward_weight,  // W: the queued weight gradients of that micro-batch
};
const char* op_name(Op op);

struct Instr {
  Op op;
  int micro;  // micro-batch, 0-based
  bool operator==(const Instr&) const = default;
};

enum class Schedule : uint8_t { one_f_one_b, zb_h1 };
// "1f1b" or "zb-h1" (ConfigError listing the choices otherwise); and back.
Schedule schedule_from_name(const std::string& name);
const char* schedule_name(Schedule s);

// Each stage's instructions for one step of `micro_batches` micro-batches over `stages` stages.
std::vector<std::vector<Instr>> make_schedule(Schedule kind, int stages, int micro_batches);

// The schedule run with unit-time F, B and W (B+W two units under 1F1B) and instant messages: the step's length
// and each stage's idle time units. The bubble fraction is idle / (stages * makespan).
struct Timeline {
  int64_t makespan = 0;
  std::vector<int64_t> idle;  // per stage
  // The most micro-batches a stage holds activations for at once (forward done, its last backward pass not).
  std::vector<int> peak_in_flight;
};
Timeline simulate(Schedule kind, const std::vector<std::vector<Instr>>& schedule);

// The bubble fractions of the formulas: 1F1B (p-1)/(m+p-1), ZB-H1 (p-1)/(3m+p-1) of the step; ZB-H1's bubble
// relative to the busy time is (p-1)/(3m).
double bubble_formula(Schedule kind, int stages, int micro_batches);

}  // namespace ds::pipe
