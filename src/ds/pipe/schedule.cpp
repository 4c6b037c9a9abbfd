// Pipeline schedules: list scheduling under unit costs, and their replay (schedule.h).
#include "ds/pipe/schedule.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>

#include "ds/core/error.h"

namespace ds::pipe {

const char* op_name(Op op) {
  switch (op) {
    case Op::forward: return "F";
    case Op::backward: return "B";
    case Op::backward_input: return "Bi";
    case Op::backward_weight: return "W";
  }
  return "?";
}

Schedule schedule_from_name(const std::string& name) {
  if (name == "1f1b") return Schedule::one_f_one_b;
  if (name == "zb-h1" || name == "zbh1" || name == "zero-bubble") return Schedule::zb_h1;
  DS_THROW(ConfigError, "[pipeline] unknown schedule '{}'; choose '1f1b' (DeepSpeed's TrainSchedule) or 'zb-h1' "
           "(zero bubble: backward split into input- and weight-gradient passes)", name);
}

const char* schedule_name(Schedule s) { return s == Schedule::one_f_one_b ? "1f1b" : "zb-h1"; }

namespace {

int64_t cost(Schedule kind, Op op) {
  return kind == Schedule::one_f_one_b && op == Op::backward ? 2 : 1;
}

// Finish times of the passes done so far, by (op, stage, micro); -1 when not done.
struct Done {
  int stages, micros;
  std::vector<int64_t> t[4];
  Done(int p, int m) : stages(p), micros(m) {
    for (auto& v : t) v.assign(static_cast<size_t>(p) * m, -1);
  }
  int64_t& at(Op op, int s, int mb) { return t[static_cast<int>(op)][static_cast<size_t>(s) * micros + mb]; }
};

// Whether instruction `in` of stage s may start at time `now`: its input has arrived (F: the previous stage's F;
// B or Bi: the next stage's input gradient, or on the last stage this stage's own F) and, for W, its B is done.
bool ready(Done& d, int s, const Instr& in, int64_t now) {
  auto done_by = [&](Op op, int stage, int mb) {
    const int64_t f = d.at(op, stage, mb);
    return f >= 0 && f <= now;
  };
  const int p = d.stages;
  switch (in.op) {
    case Op::forward: return s == 0 || done_by(Op::forward, s - 1, in.micro);
    case Op::backward:
      return s == p - 1 ? done_by(Op::forward, s, in.micro) : done_by(Op::backward, s + 1, in.micro);
    case Op::backward_input:
      return s == p - 1 ? done_by(Op::forward, s, in.micro) : done_by(Op::backward_input, s + 1, in.micro);
    case Op::backward_weight: return done_by(Op::backward_input, s, in.micro);
  }
  return false;
}

}  // namespace

// Note [Pipeline schedules]
// Both schedules come from one list scheduler run with unit-time passes (B+W two units under 1F1B): whenever a
// stage is free it starts the first of its candidates, in this order of priority:
//   B   the oldest micro-batch's backward, once its output gradient is there (1F1B: B+W; ZB-H1: B alone);
//   F   the next forward, once its input is there, unless the stage already holds p - s micro-batches whose
//       backward has not run (1F1B's memory bound: stage s holds at most p - s micro-batches' activations);
//   W   (ZB-H1) the oldest pending weight-gradient pass; it is also forced first when p - 1 are pending, so the
//       activations kept for W stay bounded.
// For 1F1B this gives exactly DeepSpeed's TrainSchedule order (stage s: p - s forwards, then one backward and one
// forward in turn, then the remaining backwards). For ZB-H1 it gives the handcrafted schedule's shape: the same
// warm-up, then B, F and W interleaved, with the W passes of the last micro-batches filling the tail, for a bubble
// of p - 1 units per stage instead of 1F1B's 3(p - 1). The executor runs each stage's list in order with real
// durations and blocking receives; any per-stage orders taken from one valid run are deadlock-free.
std::vector<std::vector<Instr>> make_schedule(Schedule kind, int p, int m) {
  DS_CHECK_AS(ConfigError, p >= 1 && m >= 1, "[pipeline] a schedule needs at least one stage and one micro-batch "
              "(found {} stage(s), {} micro-batch(es))", p, m);
  const bool zb = kind == Schedule::zb_h1;
  const Op back = zb ? Op::backward_input : Op::backward;
  std::vector<std::vector<Instr>> out(static_cast<size_t>(p));
  Done d(p, m);
  std::vector<int> next_f(p, 0), next_b(p, 0), next_w(p, 0);
  std::vector<int64_t> free_at(p, 0);
  const size_t total = static_cast<size_t>(p) * m * (zb ? 3 : 2);
  size_t issued = 0;
  int64_t now = 0;
  while (issued < total) {
    for (int s = 0; s < p; ++s) {
      if (free_at[s] > now) continue;
      std::optional<Instr> pick;
      const bool can_b = next_b[s] < next_f[s] && ready(d, s, {back, next_b[s]}, now);
      const bool can_f = next_f[s] < m && next_f[s] - next_b[s] < p - s && ready(d, s, {Op::forward, next_f[s]}, now);
      const bool can_w = zb && next_w[s] < next_b[s];
      if (can_w && next_b[s] - next_w[s] >= p) {
        pick = Instr{Op::backward_weight, next_w[s]};
      } else if (can_b) {
        pick = Instr{back, next_b[s]};
      } else if (can_f) {
        pick = Instr{Op::forward, next_f[s]};
      } else if (can_w) {
        pick = Instr{Op::backward_weight, next_w[s]};
      }
      if (!pick) continue;
      switch (pick->op) {
        case Op::forward: ++next_f[s]; break;
        case Op::backward_weight: ++next_w[s]; break;
        default: ++next_b[s]; break;
      }
      free_at[s] = now + cost(kind, pick->op);
      d.at(pick->op, s, pick->micro) = free_at[s];
      out[s].push_back(*pick);
      ++issued;
    }
    int64_t next = std::numeric_limits<int64_t>::max();
    for (int s = 0; s < p; ++s)
      if (free_at[s] > now) next = std::min(next, free_at[s]);
    DS_ASSERT(next != std::numeric_limits<int64_t>::max(), "the {} schedule stalled at {} of {} passes",
              schedule_name(kind), issued, total);
    now = next;
  }
  return out;
}

Timeline simulate(Schedule kind, const std::vector<std::vector<Instr>>& schedule) {
  const int p = static_cast<int>(schedule.size());
  int m = 0;
  for (const auto& stage : schedule)
    for (const Instr& in : stage) m = std::max(m, in.micro + 1);
  Done d(p, std::max(m, 1));
  std::vector<size_t> pc(p, 0);
  std::vector<int64_t> free_at(p, 0), busy(p, 0);
  std::vector<int> in_flight(p, 0);
  Timeline tl;
  tl.peak_in_flight.assign(p, 0);
  int64_t now = 0;
  for (;;) {
    bool left = false;
    for (int s = 0; s < p; ++s) {
      if (pc[s] >= schedule[s].size()) continue;
      left = true;
      if (free_at[s] > now) continue;
      const Instr& in = schedule[s][pc[s]];
      if (!ready(d, s, in, now)) continue;
      const int64_t c = cost(kind, in.op);
      free_at[s] = now + c;
      busy[s] += c;
      d.at(in.op, s, in.micro) = free_at[s];
      if (in.op == Op::forward) tl.peak_in_flight[s] = std::max(tl.peak_in_flight[s], ++in_flight[s]);
      if (in.op == Op::backward || in.op == Op::backward_weight) --in_flight[s];
      ++pc[s];
    }
    if (!left) break;
    int64_t next = std::numeric_limits<int64_t>::max();
    for (int s = 0; s < p; ++s)
      if (free_at[s] > now) next = std::min(next, free_at[s]);
    DS_CHECK_AS(Error, next != std::numeric_limits<int64_t>::max(), "[pipeline] the schedule deadlocks at time {}: "
                "no stage can start its next pass", now);
    now = next;
  }
  for (int s = 0; s < p; ++s) tl.makespan = std::max(tl.makespan, free_at[s]);
  for (int s = 0; s < p; ++s) tl.idle.push_back(tl.makespan - busy[s]);
  return tl;
}

double bubble_formula(Schedule kind, int p, int m) {
  return kind == Schedule::one_f_one_b ? double(p - 1) / (m + p - 1) : double(p - 1) / (3.0 * m + p - 1);
}

}  // namespace ds::pipe
