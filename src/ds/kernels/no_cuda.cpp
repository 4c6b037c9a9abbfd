// Linked when the build has no CUDA backend (DS_CUDA=OFF): every CUDA entry point reports that clearly.
#include "ds/core/device.h"
#include "ds/core/error.h"
#include "ds/kernels/cuda/launch.h"

namespace ds::cuda {

bool available() { return false; }

void* malloc_device(size_t bytes) {
  DS_THROW(DeviceError,
           "[cuda] asked for {} bytes of GPU memory, but this deepspeed.cpp was built without CUDA; rebuild with "
           "-DDS_CUDA=ON on a machine with the CUDA toolkit, or run on the CPU",
           bytes);
}

void free_device(void*) noexcept {}

namespace {
[[noreturn]] void no_cuda(const char* op, int device) {
  DS_THROW(DeviceError, "[ops] {} on cuda:{}: this deepspeed.cpp was built without CUDA, so it has no GPU kernels; "
           "rebuild with -DDS_CUDA=ON, or keep the tensors on the CPU", op, device);
}
}  // namespace

void gelu_forward(int device, float*, const float*, int64_t) { no_cuda("gelu_forward", device); }
void gelu_backward(int device, float*, const float*, const float*, int64_t) { no_cuda("gelu_backward", device); }
void add(int device, float*, const float*, const float*, int64_t) { no_cuda("add", device); }
void adamw_step(int device, float*, const float*, float*, float*, int64_t, const kernels::AdamCoeffs&) {
  no_cuda("adamw_step", device);
}
double sum_squares(int device, const float*, int64_t) { no_cuda("sum_squares", device); }

void copy_bytes(void*, const void*, size_t bytes) {
  DS_THROW(DeviceError, "[cuda] asked to copy {} bytes to or from a GPU, but this deepspeed.cpp was built without "
           "CUDA; rebuild with -DDS_CUDA=ON, or keep the tensors on the CPU", bytes);
}

}  // namespace ds::cuda
