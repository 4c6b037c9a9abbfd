// `dspeed bench train`: our training step beside PyTorch's on the same shapes (see docs/performance.md).
// `dspeed bench train-once` is the child process it runs for each of our measurements.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <climits>

#include "commands.h"
#include "ds/runtime/train_bench.h"

namespace ds::tool {
namespace {
std::string self_exe() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("dspeed");
}
}  // namespace

void add_bench_command(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("bench", "Benchmarks that print our figures beside a reference");
  cmd->require_subcommand(1);

  auto o = std::make_shared<TrainBenchOptions>();
  CLI::App* train = cmd->add_subcommand("train", "training step: deepspeed.cpp vs PyTorch, interleaved");
  train->add_option("--preset", o->preset, "tiny (L4 C128 V512 T128 B8), small, gpt2 (124M, T256 B4)")
      ->capture_default_str();
  train->add_option("--steps", o->steps, "steps per measurement")->capture_default_str();
  train->add_option("--warmup", o->warmup, "steps not timed")->capture_default_str();
  train->add_option("--threads", o->threads, "threads for both")->capture_default_str();
  train->add_option("--reps", o->reps, "interleaved repetitions")->capture_default_str();
  train->add_option("--python", o->python, "Python with torch")->capture_default_str();
  train->add_option("--torch-script", o->torch_script, "the PyTorch benchmark")->capture_default_str();
  train->add_flag("--skip-torch", o->skip_torch, "measure only ours");
  train->add_option("--json", o->json_out, "append the result as a JSON line");
  train->callback([o] {
    TrainBenchOptions opts = *o;
    opts.self_exe = self_exe();
    run_train_bench_compare(opts);
  });

  auto once = std::make_shared<std::tuple<std::string, int, int, int>>("tiny", 20, 3, 2);
  CLI::App* one = cmd->add_subcommand("train-once", "one measurement of our training step (prints RESULT json)");
  one->add_option("--preset", std::get<0>(*once));
  one->add_option("--steps", std::get<1>(*once));
  one->add_option("--warmup", std::get<2>(*once));
  one->add_option("--threads", std::get<3>(*once));
  one->callback([once] {
    const auto& [preset, steps, warmup, threads] = *once;
    const TrainBenchOnceResult r =
        run_train_bench_once(TrainBenchShape::from_preset(preset), steps, warmup, threads);
    nlohmann::json j = {{"preset", preset},          {"median_step_ms", r.median_step_ms},
                        {"tokens_per_s", r.tokens_per_s}, {"peak_rss_mb", r.peak_rss_mb},
                        {"loss_first", r.loss_first}, {"loss_last", r.loss_last}};
    std::printf("RESULT %s\n", j.dump().c_str());
  });
}

}  // namespace ds::tool
