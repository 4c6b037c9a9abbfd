// Linked when the build has no CUDA backend (DS_CUDA=OFF): every CUDA entry point reports that clearly.
#include "ds/core/device.h"
#include "ds/core/error.h"

namespace ds::cuda {

bool available() { return false; }

void* malloc_device(size_t bytes) {
  DS_THROW(DeviceError,
           "[cuda] asked for {} bytes of GPU memory, but this deepspeed.cpp was built without CUDA; rebuild with "
           "-DDS_CUDA=ON on a machine with the CUDA toolkit, or run on the CPU",
           bytes);
}

void free_device(void*) noexcept {}

void copy_bytes(void*, const void*, size_t bytes) {
  DS_THROW(DeviceError, "[cuda] asked to copy {} bytes to or from a GPU, but this deepspeed.cpp was built without "
           "CUDA; rebuild with -DDS_CUDA=ON, or keep the tensors on the CPU", bytes);
}

}  // namespace ds::cuda
