// A benchmark's child job: a command (often `mpirun ... dspeed bench X-once`) whose ranks each print one
// "RESULT {json}" line on stdout. Its stderr goes to a temporary file whose tail is reported when it fails.
#pragma once

#include <string>
#include <vector>

namespace ds {

struct ChildOutcome {
  bool ok = false;      // exited 0 with one valid RESULT line per rank
  std::string failure;  // what went wrong, with the tail of stderr
  std::vector<std::string> results;  // the JSON of each RESULT line, in the order printed
  double wall_s = 0;
};

// Runs `cmd` (through the shell) and collects the RESULT lines; a timeout (exit 124), a failure or a wrong number of
// RESULT lines makes ok false with the reason, the command and the tails of its output.
ChildOutcome run_child(const std::string& cmd, int expected_ranks, int timeout_s);

}  // namespace ds
