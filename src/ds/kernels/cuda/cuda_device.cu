// CUDA device memory and availability for the CUDA backend (built with DS_CUDA=ON).
// cudaGetDeviceCount fails with cudaErrorInsufficientDriver on machines without a GPU: that means "not available".
#include <cuda_runtime.h>

#include "ds/core/device.h"
#include "ds/core/error.h"
#include "ds/kernels/cuda/cuda_check.h"

namespace ds::cuda {

bool available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void* malloc_device(size_t bytes) {
  DS_CHECK_AS(DeviceError, available(), "[cuda] no usable GPU (cudaGetDeviceCount found none); run on the CPU");
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    DS_THROW(OutOfMemory, "[cuda] cannot allocate {} MiB of GPU memory ({} MiB free of {})", bytes >> 20, free >> 20,
             total >> 20);
  }
  DS_CUDA_CHECK(err);
  return p;
}

void free_device(void* p) noexcept {
  if (p) cudaFree(p);
}

void copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) DS_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));  // unified addressing: any direction
}

}  // namespace ds::cuda
