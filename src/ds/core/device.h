// Where memory lives and kernels run. A small value type, as MLX's Device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ds {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }  // C++17: .cu files
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// Implemented by kernels/cuda (DS_CUDA=ON) or by kernels/no_cuda.cpp, which throws DeviceError.
namespace cuda {
bool available();
void* malloc_device(size_t bytes);  // on the calling thread's current device (cudaSetDevice)
void free_device(void* p) noexcept;
// Copies bytes between host and GPU memory or within a GPU, synchronously (the direction from the pointers).
void copy_bytes(void* dst, const void* src, size_t bytes);
}  // namespace cuda

}  // namespace ds
