// popen with "2>&1" so a failing child's own error message reaches the user; the last 20 other lines are kept.
#include "ds/core/child_process.h"

#include <array>
#include <cstdio>
#include <deque>

#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds {

nlohmann::json run_child_result(const std::string& cmd) {
  std::FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  DS_CHECK_AS(IoError, p != nullptr, "[bench] cannot run '{}'", cmd);
  std::string line, result;
  std::deque<std::string> tail;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) {
    line += buf.data();
    if (line.empty() || line.back() != '\n') continue;
    if (line.rfind("RESULT ", 0) == 0) {
      result = line.substr(7);
    } else {
      tail.push_back(line);
      if (tail.size() > 20) tail.pop_front();
    }
    line.clear();
  }
  const int rc = pclose(p);
  std::string printed;
  for (const std::string& l : tail) printed += "    " + l;
  DS_CHECK_AS(IoError, rc == 0 && !result.empty(), "[bench] '{}' failed (status {}) or printed no RESULT line; its "
              "last lines:\n{}", cmd, rc, printed);
  nlohmann::json j;
  const std::string problem = parse_json_bounded(result, JsonLimits{}, j);
  DS_CHECK_AS(IoError, problem.empty(), "[bench] '{}' printed an unreadable RESULT line ({}): {}", cmd, problem,
              result.substr(0, 200));
  return j;
}

}  // namespace ds
