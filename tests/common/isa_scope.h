// Selects the CPU kernels' instruction set for the lifetime of the object, through DS_CPU_ISA (which the kernels
// read on every call): "avx2" forces the AVX2 paths; "native" or "" leaves the machine's best (AVX-512 where
// present), so a test can run every kernel path the machine has.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace ds::testing {

class IsaScope {
 public:
  explicit IsaScope(const std::string& isa) {
    if (const char* old = std::getenv("DS_CPU_ISA")) previous_ = old;
    if (isa.empty() || isa == "native") unsetenv("DS_CPU_ISA");
    else setenv("DS_CPU_ISA", isa.c_str(), 1);
  }
  ~IsaScope() {  // restores what the test binary was started with
    if (previous_) setenv("DS_CPU_ISA", previous_->c_str(), 1);
    else unsetenv("DS_CPU_ISA");
  }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  std::optional<std::string> previous_;
};

}  // namespace ds::testing
