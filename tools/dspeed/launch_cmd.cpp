// `dspeed launch [-n N] [--hostfile FILE] [-i SPEC | -e SPEC] [--num-nodes K] [--dry-run] -- COMMAND ARGS...`:
// argument parsing only; ds/app/launcher does the work (see docs/launching.md).
// The launch exits with mpirun's own status (a failed rank's exit code), so this is the one command that leaves
// through std::exit rather than returning to main's "exit 0 / print ds::Error" path.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "commands.h"
#include "ds/app/launcher.h"

namespace ds::tool {

void add_launch_command(CLI::App& root) {
  auto opts = std::make_shared<app::LaunchOptions>();
  auto dry_run = std::make_shared<bool>(false);
  CLI::App* cmd = root.add_subcommand(
      "launch", "Run a command as N MPI ranks with mpirun (DeepSpeed's launcher: hostfile, --include/--exclude)");
  cmd->add_option("-n,--num-procs,--num_procs", opts->num_procs,
                  "ranks on this machine (default 1); with a hostfile: ranks per host, like DeepSpeed's --num_gpus");
  cmd->add_option("-H,--hostfile", opts->hostfile,
                  "DeepSpeed hostfile of '<host> slots=<N>' lines (default: /job/hostfile if present, else this "
                  "machine only)");
  cmd->add_option("-i,--include", opts->include,
                  "only these hosts/slots: NODE_SPEC[@NODE_SPEC...], NODE_SPEC = host[:slot[,slot...]]");
  cmd->add_option("-e,--exclude", opts->exclude, "all but these hosts/slots (same syntax as -i)");
  cmd->add_option("--num-nodes,--num_nodes", opts->num_nodes, "use the first K hosts of the hostfile");
  cmd->add_option("--launcher-path", opts->launcher_path, "mpirun to use (default: mpirun on PATH)");
  cmd->add_flag("--dry-run", *dry_run, "print the mpirun command and its environment instead of running it");
  cmd->add_option("command", opts->command, "the program to run on every rank and its arguments (after --)")
      ->take_all();
  cmd->positionals_at_end();  // everything from the program on belongs to it, even without '--'
  cmd->callback([opts, dry_run] {
    const app::LaunchPlan plan = app::plan_launch(*opts);
    if (*dry_run) {
      std::fputs(app::format_plan(plan).c_str(), stdout);
      return;
    }
    const int status = app::run_launch(plan);
    if (status != 0) {
      std::fprintf(stderr, "error: [launch] mpirun exited with status %d (a rank failed or was stopped; its output "
                   "is above)\n", status);
    }
    std::fflush(nullptr);
    std::exit(status);
  });
}

}  // namespace ds::tool
