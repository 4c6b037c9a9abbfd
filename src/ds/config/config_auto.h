// Internal to the config parser: fills the "auto" values of a parsed JSON tree from AutoValues (config_auto.cpp).
#pragma once

#include "ds/config/config.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace ds::config::detail {

// Replaces each "auto" that Hugging Face's integration would fill, appending "'key' = value (source)" to `resolved`;
// a flag given on the command line that the config contradicts is a ConfigError, one it never uses a warning.
void resolve_auto(nlohmann::json& root, int world, const AutoValues& autos, const std::string& source,
                  std::vector<std::string>& resolved, std::vector<std::string>& warnings);

}  // namespace ds::config::detail
