// Child jobs of the benchmarks (bench_child.h).
#include "bench/bench_child.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ds/core/error.h"
#include "ds/core/stats.h"
#include "ds/core/strings.h"

namespace ds {

namespace {
std::string tail_lines(const std::deque<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += "    " + l + (l.empty() || l.back() != '\n' ? "\n" : "");
  return out;
}

// Runs `cmd` with stderr in a temporary file; collects the RESULT lines of stdout.
}  // namespace

ChildOutcome run_child(const std::string& cmd, int expected_ranks, int timeout_s) {
  ChildOutcome out;
  char err_path[] = "/tmp/dspeed-bench-child-XXXXXX";
  const int fd = mkstemp(err_path);
  DS_CHECK_AS(IoError, fd >= 0, "[bench] cannot create a temporary file for a child's stderr in /tmp");
  ::close(fd);
  const auto t0 = std::chrono::steady_clock::now();
  std::FILE* p = popen((cmd + " 2>" + shell_quote(err_path)).c_str(), "r");
  if (p == nullptr) {
    ::unlink(err_path);
    DS_THROW(IoError, "[bench] cannot run '{}'", cmd);
  }
  std::deque<std::string> other;  // non-RESULT stdout, last lines
  std::string line;
  std::array<char, 4096> buf{};
  std::vector<std::string> parse_errors;
  while (std::fgets(buf.data(), buf.size(), p)) {
    line += buf.data();
    if (line.empty() || line.back() != '\n') continue;
    const size_t at = line.find("RESULT {");
    if (at != std::string::npos) {
      std::string json = line.substr(at + 7);
      if (nlohmann::json::accept(json)) {
        out.results.push_back(std::move(json));
      } else {
        parse_errors.push_back(fmt::format("unreadable RESULT line: {}", line));
      }
    } else {
      other.push_back(line);
      if (other.size() > 10) other.pop_front();
    }
    line.clear();
  }
  const int status = pclose(p);
  out.wall_s = seconds_since(t0);

  std::deque<std::string> err;
  {
    std::ifstream in(err_path);
    std::string l;
    while (std::getline(in, l)) {
      err.push_back(l);
      if (err.size() > 30) err.pop_front();
    }
  }
  ::unlink(err_path);

  std::string why;
  const int code = (status != -1 && WIFEXITED(status)) ? WEXITSTATUS(status) : -1;
  if (code == 124) {
    why = fmt::format("timed out after {} s (raise --child-timeout)", timeout_s);
  } else if (code != 0) {
    why = status != -1 && WIFSIGNALED(status) ? fmt::format("killed by signal {}", WTERMSIG(status))
                                              : fmt::format("exit status {}", code);
  } else if (!parse_errors.empty()) {
    why = parse_errors.front();
  } else if (static_cast<int>(out.results.size()) != expected_ranks) {
    why = fmt::format("{} RESULT lines from {} ranks", out.results.size(), expected_ranks);
  }
  if (why.empty()) {
    out.ok = true;
    return out;
  }
  out.failure = fmt::format("{}\n  command: {}\n", why, cmd);
  if (!err.empty()) out.failure += "  last lines of its stderr:\n" + tail_lines(err);
  if (!other.empty()) out.failure += "  last lines of its stdout:\n" + tail_lines(other);
  return out;
}

}  // namespace ds
