// `dspeed plot`: parses arguments into PlotOptions; reading the runs and drawing the chart are in ds/app/plot.h.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <memory>

#include "commands.h"
#include "ds/app/plot.h"

namespace ds::tool {

void add_plot_command(CLI::App& root) {
  auto opts = std::make_shared<app::PlotOptions>();
  CLI::App* cmd = root.add_subcommand(
      "plot", "Draw loss and learning rate against step for one or more training runs as an SVG chart");
  cmd->add_option("RUN_DIR", opts->run_dirs, "run folders holding the metrics.csv of `dspeed train --out DIR`")
      ->required();
  cmd->add_option("-o,--out", opts->out, "SVG file to write (default: RUN_DIR/loss.svg for one run, ./loss.svg for "
                  "several)");
  cmd->add_option("--title", opts->title, "chart title (default: the run names)");
  cmd->callback([opts] { fmt::print("{}\n", app::run_plot(*opts)); });
}

}  // namespace ds::tool
