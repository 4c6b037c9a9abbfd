// The storage dtypes of a ZeRO run, shared by the ZeRO parts and the engine.
#pragma once

#include "ds/core/dtype.h"

namespace ds::zero {

// f32 for both in fp32 training; with fp16/bf16, params is the 16-bit type and grads the gradient accumulation
// type (16-bit or f32). Gradients are communicated in the grads dtype.
struct ZeroPrecision {
  DType params = DType::f32;
  DType grads = DType::f32;
  bool mixed() const { return params != DType::f32; }
};

}  // namespace ds::zero
