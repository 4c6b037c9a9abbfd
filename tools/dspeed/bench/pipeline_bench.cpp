// The pipeline-schedule benchmark (pipeline_bench.h).
#include "bench/pipeline_bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/bench_child.h"
#include "ds/comm/comm_factory.h"
#include "ds/core/error.h"
#include "ds/core/stats.h"
#include "ds/core/strings.h"
#include "ds/engine/pipeline_executor.h"

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

void pass_for(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }

// A stage whose passes take fixed times: forward F; backward B then W, or B alone with W queued when the schedule
// splits it (ctx.defer_weight_grads). The last stage's block is the loss.
class TimedStage final : public nn::Block {
 public:
  TimedStage(double ms, int width, bool loss) : Block("timed_stage"), ms_(ms), width_(width), loss_(loss) {}
  Tensor forward(nn::Ctx& ctx, const Tensor&, nn::Pass& pass) override {
    pass_for(ms_);
    if (loss_) {
      pass.loss_sum = 0;
      return Tensor();
    }
    Tensor y = ctx.act().alloc({pass.rows_count(), width_});
    y.zero_();
    return y;
  }
  Tensor backward(nn::Ctx& ctx, const Tensor&, nn::Pass& pass, Tensor dx) override {
    pass_for(ms_);
    if (ctx.defer_weight_grads) {
      const double ms = ms_;
      ctx.defer([ms] { pass_for(ms); });
    } else {
      pass_for(ms_);
    }
    if (loss_) dx = ctx.scratch().alloc({pass.rows_count(), width_});
    if (dx.defined()) dx.zero_();
    return dx;
  }
  std::vector<const nn::Module*> units() const override { return {}; }
  bool is_loss() const override { return loss_; }
  const char* type_name() const override { return "TimedStage"; }
  void collect_parameters(std::vector<nn::Parameter*>&) const override {}

 private:
  double ms_;
  int width_;
  bool loss_;
};

struct Cell {
  int stages = 0, micro = 0;
  std::string schedule;
  bool ok = false;
  double wall_s = 0, idle_s = 0, bubble = 0, formula = 0;
};

}  // namespace

std::string run_pipeline_bench_once(const PipelineBenchOnceOptions& o) {
  std::unique_ptr<comm::Communicator> world = comm::make_world_communicator("mpi");
  try {
    const int stage = world->rank(), p = world->size();
    constexpr int kB = 1, kT = 16;
    nn::ParameterStore store;
    TimedStage block(o.pass_ms, o.width, stage == p - 1);
    nn::ModuleRunner runner(store, {&block});
    engine::StageLayers layers;
    layers.runner = &runner;
    layers.width = o.width;
    layers.check_tokens = [](const int32_t*, const int32_t*, int B, int T) { return int64_t(B) * T; };
    engine::PipelineExecutor exec(layers, nullptr, *world, pipe::schedule_from_name(o.schedule), o.micro_batches,
                                  kB, kT);
    auto next = [](int32_t* in, int32_t* tg) {
      std::fill(in, in + kB * kT, 0);
      std::fill(tg, tg + kB * kT, 0);
    };
    std::vector<double> wall, busy, waiting;
    for (int step = 0; step < o.steps; ++step) {
      world->barrier();
      exec.take_timing();
      const auto t0 = Clock::now();
      exec.train(next, 1.0f);
      world->barrier();  // the step ends for every stage when the last one is done
      const double w = std::chrono::duration<double>(Clock::now() - t0).count();
      const engine::PipelineExecutor::Timing t = exec.take_timing();
      if (step < o.warmup) continue;
      wall.push_back(w);
      busy.push_back(t.busy);
      waiting.push_back(t.waiting);
    }
    const nlohmann::json r = {{"rank", stage},          {"stages", p},           {"micro", o.micro_batches},
                              {"schedule", o.schedule}, {"wall_s", median(wall)}, {"busy_s", median(busy)},
                              {"waiting_s", median(waiting)}};
    return r.dump();
  } catch (const std::exception& e) {
    world->abort(e.what());
    throw;
  }
}

std::string run_pipeline_bench(const PipelineBenchOptions& o) {
  DS_CHECK_AS(ConfigError, o.pass_ms > 0 && o.steps > o.warmup && o.warmup >= 0, "[bench] need --pass-ms > 0 and "
              "--steps > --warmup >= 0 (found {}, {}, {})", o.pass_ms, o.steps, o.warmup);
  for (const std::string& s : o.schedules) pipe::schedule_from_name(s);  // a bad name fails here, once
  const bool root = ::geteuid() == 0;
  fmt::print("dspeed bench pipeline: passes of {} ms (F, B and W each), {} steps ({} warmup), stages as MPI "
             "processes; bubble = idle / (stages x step wall time)\n", o.pass_ms, o.steps, o.warmup);
  std::fflush(stdout);
  std::vector<Cell> cells;
  std::vector<std::string> failures;
  for (int p : o.stages)
    for (int m : o.micro_batches)
      for (const std::string& schedule : o.schedules) {
        Cell c;
        c.stages = p, c.micro = m, c.schedule = schedule;
        const std::string cmd = fmt::format(
            "timeout -k 10 {} {}{} --oversubscribe --bind-to none -np {} -x OMP_NUM_THREADS=1 {} bench pipeline-once "
            "--schedule {} --micro-batches {} --pass-ms {} --steps {} --warmup {}",
            o.child_timeout_s, shell_quote(o.mpirun), root ? " --allow-run-as-root" : "", p, shell_quote(o.self_exe),
            schedule, m, o.pass_ms, o.steps, o.warmup);
        fmt::print(stderr, "p {} m {} {} ... ", p, m, schedule);
        std::fflush(stderr);
        const ChildOutcome out = run_child(cmd, p, o.child_timeout_s);
        if (!out.ok) {
          fmt::print(stderr, "FAILED: {}", out.failure);
          failures.push_back(fmt::format("p {} m {} {}", p, m, schedule));
          cells.push_back(c);
          continue;
        }
        double busy = 0;
        for (const std::string& text : out.results) {
          const nlohmann::json r = nlohmann::json::parse(text);
          c.wall_s = std::max(c.wall_s, r.at("wall_s").get<double>());
          busy += r.at("busy_s").get<double>();
        }
        c.idle_s = p * c.wall_s - busy;
        c.bubble = c.idle_s / (p * c.wall_s);
        c.formula = pipe::bubble_formula(pipe::schedule_from_name(schedule), p, m);
        c.ok = true;
        fmt::print(stderr, "step {:.2f} s\n", c.wall_s);
        cells.push_back(c);
      }

  fmt::print("\n{:>6} {:>5} {:>8} {:>10} {:>12} {:>10} {:>10} {:>7}\n", "stages", "m", "schedule", "step s",
             "idle s/stage", "bubble", "formula", "ratio");
  nlohmann::json rows = nlohmann::json::array();
  bool within = true, below = true;
  for (const Cell& c : cells) {
    if (!c.ok) {
      fmt::print("{:>6} {:>5} {:>8}  failed\n", c.stages, c.micro, c.schedule);
      continue;
    }
    const double ratio = c.bubble / c.formula;
    within = within && std::fabs(ratio - 1) <= 0.10;
    fmt::print("{:>6} {:>5} {:>8} {:>10.3f} {:>12.3f} {:>10.4f} {:>10.4f} {:>7.3f}\n", c.stages, c.micro, c.schedule,
               c.wall_s, c.idle_s / c.stages, c.bubble, c.formula, ratio);
    rows.push_back({{"stages", c.stages}, {"micro", c.micro}, {"schedule", c.schedule}, {"step_s", c.wall_s},
                    {"bubble", c.bubble}, {"formula", c.formula}});
    for (const Cell& d : cells)
      if (d.ok && d.stages == c.stages && d.micro == c.micro && c.schedule == "zb-h1" && d.schedule == "1f1b")
        below = below && c.bubble < d.bubble;
  }
  fmt::print("\ntargets: every measured bubble within 10% of its formula: {}; ZB-H1 below 1F1B at every (p, m): {}\n",
             within ? "met" : "NOT met", below ? "met" : "NOT met");
  const nlohmann::json result = {{"bench", "pipeline"}, {"pass_ms", o.pass_ms}, {"rows", rows},
                                 {"within_10pct", within}, {"zb_below_1f1b", below}};
  fmt::print("RESULT {}\n", result.dump());
  if (!o.json_out.empty()) std::ofstream(o.json_out, std::ios::app) << result.dump() << "\n";
  DS_CHECK_AS(Error, failures.empty(), "[bench] {} run(s) failed: {}", failures.size(), fmt::join(failures, ", "));
  return result.dump();
}

}  // namespace ds
