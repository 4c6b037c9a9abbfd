// Progress bar rendering.
#include "ds/app/progress.h"

#include <fmt/core.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace ds::app {
namespace {

int terminal_columns(std::FILE* out) {
  winsize ws{};
  if (ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// Code points, which is what the terminal shows for this text (no wide characters are used).
size_t display_width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

std::string format_count(double value) {
  std::string digits = fmt::format("{:.0f}", value);
  std::string out;
  const size_t start = (!digits.empty() && digits[0] == '-') ? 1 : 0;
  for (size_t i = 0; i < digits.size(); ++i) {
    out += digits[i];
    const size_t left = digits.size() - 1 - i;
    if (i >= start && left > 0 && left % 3 == 0) out += ',';
  }
  return out;
}

ProgressBar::ProgressBar(int64_t total_steps, int64_t log_every, std::FILE* out)
    : total_(total_steps), log_every_(log_every > 0 ? log_every : 1), out_(out), tty_(isatty(fileno(out)) != 0) {
  start_ = std::chrono::steady_clock::now();
}

void ProgressBar::update(int64_t step, const std::string& fields) {
  const auto now = std::chrono::steady_clock::now();
  if (first_step_ < 0) {
    first_step_ = step - 1;
    start_ = now;
  }
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : -1.0;
  const double frac = total_ > 0 ? static_cast<double>(step) / static_cast<double>(total_) : 1.0;
  if (tty_) {
    // The line must never wrap, or "\r" would redraw only its last row: the bar takes what the text leaves.
    const std::string head = fmt::format("step {}/{} ", step, total_);
    const std::string tail = fmt::format(" {:3.0f}% | {} | ETA {}", frac * 100, fields, format_duration(eta));
    const int cols = terminal_columns(out_) - 1;
    const int room = cols - static_cast<int>(display_width(head) + display_width(tail));
    const int width = std::min(30, room);
    std::string bar;
    if (width >= 5) {
      const int filled = static_cast<int>(frac * width);
      for (int i = 0; i < width; ++i) bar += i < filled ? "█" : "░";
    }
    std::string line = head + bar + tail;
    if (static_cast<int>(display_width(line)) > cols) line = (head + tail).substr(0, static_cast<size_t>(cols));
    fmt::print(out_, "\r\033[K{}", line);
    std::fflush(out_);
    drawn_ = true;
  } else if (step % log_every_ == 0 || step == total_) {
    fmt::print(out_, "step {}/{} ({:.0f}%) | {} | elapsed {} | ETA {}\n", step, total_, frac * 100, fields,
               format_duration(elapsed), format_duration(eta));
    std::fflush(out_);
  }
}

void ProgressBar::message(const std::string& text) {
  if (tty_ && drawn_) fmt::print(out_, "\r\033[K");
  fmt::print(out_, "{}\n", text);
  std::fflush(out_);
  drawn_ = false;
}

void ProgressBar::finish() {
  if (tty_ && drawn_) fmt::print(out_, "\n");
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace ds::app
