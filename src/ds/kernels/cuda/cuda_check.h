// Checks for CUDA runtime and cuBLAS calls (CUDA sources only): a failure throws DeviceError naming the call and
// the library's own description of the error.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ds/core/error.h"

#define DS_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                   \
    const cudaError_t err_ = (expr);                                                                     \
    DS_CHECK_AS(::ds::DeviceError, err_ == cudaSuccess, "[cuda] {} failed: {}", #expr,                   \
                cudaGetErrorString(err_));                                                               \
  } while (0)
#define DS_CUBLAS_CHECK(expr)                                                                            \
  do {                                                                                                   \
    const cublasStatus_t st_ = (expr);                                                                   \
    DS_CHECK_AS(::ds::DeviceError, st_ == CUBLAS_STATUS_SUCCESS, "[cuda] {} failed: {}", #expr,          \
                cublasGetStatusString(st_));                                                             \
  } while (0)
