// Config tests look for a warning by the fragments it must hold, not by its whole text.
// Header-only so that any part's test executable can use it without a library of its own.
#pragma once

#include <initializer_list>
#include <string>

#include "ds/config/config.h"

namespace ds::test {

// True when one of the config's warnings holds every fragment.
inline bool has_warning(const config::DeepSpeedConfig& c, std::initializer_list<std::string> fragments) {
  for (const auto& w : c.warnings) {
    bool all = true;
    for (const auto& f : fragments) all = all && w.find(f) != std::string::npos;
    if (all) return true;
  }
  return false;
}

}  // namespace ds::test
