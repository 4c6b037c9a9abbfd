// dspeed: the command-line front end. Subcommands register themselves (commands.h); every ds::Error reaching
// here is printed once, as one line, and turns into exit status 1.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "commands.h"
#include "ds/core/error.h"

namespace {

// Serving shares the cores between the model's OpenMP threads, the scheduling loop and the HTTP threads. libgomp's
// default spins about 300,000 times before a waiting thread sleeps, which starves them: with another busy process
// on a 2-core machine, decoding fell from about 1000 to 25 tokens/s. Fully passive waiting costs every parallel
// region a wake-up (single-stream decode about 20% slower, prefill 50% on a quiet machine); a short spin of 1000
// keeps the back-to-back regions of one pass fast and sleeps between passes. libgomp reads these once, when it
// loads, so the serving commands run again with GOMP_SPINCOUNT=1000 unless the user has set either variable.
void short_openmp_spin_for_serving(int argc, char** argv) {
  if (argc < 2 || std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  const std::string cmd = argv[1], sub = argc > 2 ? argv[2] : "";
  const bool serving = cmd == "serve" || cmd == "generate" || (cmd == "bench" && (sub == "serve" || sub == "decode"));
  if (!serving) return;
  setenv("GOMP_SPINCOUNT", "1000", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default policy
}

}  // namespace

int main(int argc, char** argv) {
  short_openmp_spin_for_serving(argc, argv);
  CLI::App app{"deepspeed.cpp: train and serve transformer language models with DeepSpeed's techniques", "dspeed"};
  app.require_subcommand(1, 1);
  ds::tool::add_train_command(app);
  ds::tool::add_data_command(app);
  ds::tool::add_bench_command(app);
  ds::tool::add_launch_command(app);
  ds::tool::add_ckpt_command(app);
  ds::tool::add_serve_command(app);
  ds::tool::add_generate_command(app);
  ds::tool::add_eval_command(app);
  ds::tool::add_plot_command(app);
  try {
    app.parse(argc, argv);  // the chosen subcommand's callback does the work
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ds::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
