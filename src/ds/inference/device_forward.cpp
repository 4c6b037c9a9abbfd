// parse_device: the --device names of serve, generate and the benchmarks. Shared by every build; the CUDA forward
// itself is in cuda/ (or no_cuda.cpp reports its absence).
#include "ds/inference/device_forward.h"

#include <charconv>
#include <system_error>

#include "ds/core/error.h"

namespace ds::inference {

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) {
    int index = -1;
    const char* b = name.data() + 5;
    const char* e = name.data() + name.size();
    const auto [ptr, ec] = std::from_chars(b, e, index);
    if (ec == std::errc() && ptr == e && b != e && index >= 0) return Device::cuda(index);
  }
  DS_THROW(ConfigError, "[serve] unknown device '{}'; expected cpu, cuda or cuda:N (a GPU index)", name);
}

}  // namespace ds::inference
