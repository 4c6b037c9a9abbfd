// Logging sink: a mutex keeps lines whole when ranks are threads; the level is process-wide.
#include "ds/core/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace ds {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
std::mutex g_mutex;
thread_local int t_rank = -1;
thread_local int t_world = 0;
}  // namespace

void set_log_level(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }
void set_log_rank(int rank, int world) {
  t_rank = rank;
  t_world = world;
}

void log_message(LogLevel level, const std::string& text) {
  if (static_cast<int>(level) < g_level.load()) return;
  const char* tag = level == LogLevel::debug     ? "debug"
                    : level == LogLevel::info    ? "info"
                    : level == LogLevel::warning ? "warning"
                                                 : "error";
  std::string prefix = t_world > 1 ? fmt::format("[rank {}/{}] ", t_rank, t_world) : std::string();
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "%s%s: %s\n", prefix.c_str(), tag, text.c_str());
  std::fflush(stderr);
}

}  // namespace ds
