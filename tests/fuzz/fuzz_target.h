// What every fuzz target shares. A target feeds one input to a parser of untrusted bytes; the parser may refuse it
// with a ds::Error (the clear error a user sees), and anything else that escapes (another exception, a crash, a
// sanitizer report, a hang, memory beyond libFuzzer's -rss_limit_mb) is a finding. The same targets build two
// ways: with libFuzzer (-DDS_FUZZ=ON, Clang) to search, and with tests/fuzz/replay_main.cpp in the test build,
// where ctest replays the fixed inputs of tests/fuzz/corpus/<target>/ (crafted deep, huge and overflowing cases,
// and whatever a search once found).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

#include "ds/core/error.h"

namespace ds::fuzz {

template <typename F>
int run_input(F&& f) {
  try {
    f();
  } catch (const ds::Error&) {
    // refused with a clear error: the expected outcome for a bad input
  }
  return 0;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A directory of this process's own for parsers that read files; removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const struct Dir {
    std::filesystem::path path;
    Dir() {
      path = std::filesystem::temp_directory_path() / ("dspeed-fuzz-" + std::to_string(::getpid()));
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } dir;
  return dir.path;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write the fuzz scratch file " + path.string());
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
}

}  // namespace ds::fuzz
