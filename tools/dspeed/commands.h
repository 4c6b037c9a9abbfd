// Each dspeed subcommand lives in its own file and registers itself on the root CLI11 app.
// Argument parsing only: the work is done by the library.
#pragma once

namespace CLI {
class App;
}

namespace ds::tool {

void add_train_command(CLI::App& root);
void add_data_command(CLI::App& root);
void add_bench_command(CLI::App& root);
void add_launch_command(CLI::App& root);
void add_ckpt_command(CLI::App& root);
void add_serve_command(CLI::App& root);
void add_generate_command(CLI::App& root);
void add_plot_command(CLI::App& root);
void add_eval_command(CLI::App& root);

}  // namespace ds::tool
