// popen with "2>&1" so a failing child's own error message reaches the user; the last 20 other lines are kept.
#include "ds/core/child_process.h"

#include <array>
#include <cstdio>
#include <deque>

#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds {

namespace {

// Runs cmd, calling on_line(line) for each line it prints (stderr joined); returns the exit status and the last 20
// lines on_line did not claim (it returns true for a line it keeps).
template <typename F>
int run_lines(const std::string& cmd, F&& on_line, std::string& printed) {
  std::FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  DS_CHECK_AS(IoError, p != nullptr, "[bench] cannot run '{}'", cmd);
  std::string line;
  std::deque<std::string> tail;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) {
    line += buf.data();
    if (line.empty() || line.back() != '\n') continue;
    if (!on_line(line)) {
      tail.push_back(line);
      if (tail.size() > 20) tail.pop_front();
    }
    line.clear();
  }
  if (!line.empty() && !on_line(line)) tail.push_back(line);
  for (const std::string& l : tail) printed += "    " + l;
  return pclose(p);
}

}  // namespace

std::string run_child_output(const std::string& cmd) {
  std::string all, printed;
  const int rc = run_lines(cmd, [&](const std::string& line) {
    all += line;
    return false;
  }, printed);
  DS_CHECK_AS(IoError, rc == 0, "[bench] '{}' failed (status {}); its last lines:\n{}", cmd, rc, printed);
  return all;
}

nlohmann::json run_child_result(const std::string& cmd) {
  std::string result, printed;
  const int rc = run_lines(cmd, [&](const std::string& line) {
    if (line.rfind("RESULT ", 0) != 0) return false;
    result = line.substr(7);
    return true;
  }, printed);
  DS_CHECK_AS(IoError, rc == 0 && !result.empty(), "[bench] '{}' failed (status {}) or printed no RESULT line; its "
              "last lines:\n{}", cmd, rc, printed);
  nlohmann::json j;
  const std::string problem = parse_json_bounded(result, JsonLimits{}, j);
  DS_CHECK_AS(IoError, problem.empty(), "[bench] '{}' printed an unreadable RESULT line ({}): {}", cmd, problem,
              result.substr(0, 200));
  return j;
}

}  // namespace ds
