// Terminal progress bar for training: one line redrawn in place on a terminal; on a pipe or file, a plain line
// every `log_every` steps instead, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ds::app {

class ProgressBar {
 public:
  ProgressBar(int64_t total_steps, int64_t log_every, std::FILE* out = stderr);
  // Redraws with `fields` (e.g. "loss 6.83 | lr 1.0e-03 | 2,310 tok/s"); the ETA is computed here.
  void update(int64_t step, const std::string& fields);
  // Prints a message on its own line without garbling the bar.
  void message(const std::string& text);
  void finish();
  bool is_tty() const { return tty_; }

 private:
  int64_t total_;
  int64_t log_every_;
  std::FILE* out_;
  bool tty_;
  bool drawn_ = false;
  int64_t first_step_ = -1;
  std::chrono::steady_clock::time_point start_;
};

// "1:02:03" or "04:05"
std::string format_duration(double seconds);
// "12,345"
std::string format_count(double value);

}  // namespace ds::app
