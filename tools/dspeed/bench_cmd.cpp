// `dspeed bench`: benchmark drivers (see bench/ and docs/performance.md).
#include <CLI/CLI.hpp>

#include "commands.h"

namespace ds::tool {

void add_bench_command(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("bench", "Benchmarks that print our figures beside a reference");
  cmd->require_subcommand(1);
}

}  // namespace ds::tool
