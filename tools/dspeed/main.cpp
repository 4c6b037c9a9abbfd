// dspeed: the command-line front end. Subcommands register themselves (commands.h); every ds::Error reaching
// here is printed once, as one line, and turns into exit status 1.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "commands.h"
#include "ds/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"deepspeed.cpp: train and serve transformer language models with DeepSpeed's techniques", "dspeed"};
  app.require_subcommand(1, 1);
  ds::tool::add_train_command(app);
  ds::tool::add_data_command(app);
  ds::tool::add_bench_command(app);
  ds::tool::add_launch_command(app);
  ds::tool::add_ckpt_command(app);
  ds::tool::add_serve_command(app);
  ds::tool::add_generate_command(app);
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
