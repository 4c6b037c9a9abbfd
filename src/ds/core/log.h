// Logging: one line per message on stderr, prefixed with the level and, in distributed runs, "[rank r/w]".
// Kept tiny and fmt-based so that every part can log without pulling a heavy header.
#pragma once

#include <fmt/core.h>

#include <string>
#include <utility>

namespace ds {

enum class LogLevel { debug = 0, info = 1, warning = 2, error = 3, off = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
// Sets the "[rank r/w]" prefix for this thread (ranks may be threads in the local backend).
void set_log_rank(int rank, int world);
void log_message(LogLevel level, const std::string& text);

template <typename... Args>
void log_info(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() <= LogLevel::info) log_message(LogLevel::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_warning(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() <= LogLevel::warning)
    log_message(LogLevel::warning, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() <= LogLevel::debug) log_message(LogLevel::debug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace ds
