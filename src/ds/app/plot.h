// Training-run charts behind `dspeed plot`: reads the metrics.csv that `dspeed train` writes and draws loss and
// learning rate against step as one standalone SVG 1.1 file (no plotting library, no fonts to embed).
// The CSV's last row repeats the last step as a summary (mean train loss of the last 20 steps, validation loss over
// the whole set): for a repeated step the first row's train loss and lr are kept and the later row's val_loss wins,
// so the summary adds the final validation point without a false kink in the train curve.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ds::app {

// One run's curves as (step, value) pairs in increasing step order; non-finite values are never stored.
struct RunSeries {
  std::string label;
  std::vector<std::pair<double, double>> train_loss, val_loss, lr;
};

// Reads a metrics.csv. Columns are found by header name: step, loss, val_loss and lr are required, others are
// ignored. Empty fields and NaN/inf values are skipped; a repeated header line (concatenated files) is skipped;
// an unterminated last line with too few fields (a row being written by a live run) is ignored.
// IoError for a missing or unreadable file, a file over 256 MiB or a line over 64 KiB, a missing required column,
// a row with the wrong number of fields and a malformed number (the message names file, line and column).
RunSeries read_metrics_csv(const std::string& path, std::string label);

// A standalone SVG document (900 x 640): the title, a loss panel (per run: raw train loss thin and light, its
// bias-corrected EMA (0.9) on top, validation loss dashed with circle markers), a learning-rate panel below on the
// same step axis, and a legend to the right of the plots. Any number of runs, including none or empty ones.
std::string render_loss_svg(const std::vector<RunSeries>& runs, const std::string& title);

// render_loss_svg written atomically (a temp file beside `path`, then rename); IoError on failure.
void write_loss_svg(const std::vector<RunSeries>& runs, const std::string& title, const std::string& path);

// Legend labels for run directories: each directory's own name ("runs/a/" -> "a"); every label that two
// directories share is replaced by that directory's full (absolute, normalised) path.
std::vector<std::string> run_labels(const std::vector<std::string>& run_dirs);

struct PlotOptions {
  std::vector<std::string> run_dirs;  // each holds a metrics.csv (a metrics file itself is accepted too)
  std::string out;                    // empty: RUN_DIR/loss.svg for one run, ./loss.svg for several
  std::string title;                  // empty: the run labels, or "N runs" when they do not fit
};

// The work of `dspeed plot`: reads every run, writes the chart, returns the path written.
std::string run_plot(const PlotOptions& options);

}  // namespace ds::app
