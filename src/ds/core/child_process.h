// Running a child benchmark (ours in another process, or a PyTorch reference) and reading its result: the child
// prints "RESULT {json}" on a line of its own; everything else it prints is kept only to explain a failure.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace ds {

// Runs `cmd` through /bin/sh with stderr joined to stdout and returns the JSON of its last "RESULT " line. Throws
// IoError with the command, its exit status and the last lines it printed when it fails or prints no result.
nlohmann::json run_child_result(const std::string& cmd);
// Runs `cmd` the same way and returns everything it printed; IoError with its exit status and last lines when it
// fails. For tools that print their own formats (fio's JSON).
std::string run_child_output(const std::string& cmd);

}  // namespace ds
