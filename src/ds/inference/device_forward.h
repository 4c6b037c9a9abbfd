// The forward of an engine whose model and KV cache live on a device other than the CPU (--device cuda). The
// engine keeps its scheduling state (KvStateManager: block tables, seen tokens) on the host as always; a
// DeviceForward holds the device copy of the weights and the KV storage and runs one ragged pass.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ds/core/device.h"
#include "ds/inference/ragged_batch.h"

namespace ds::inference {

class InferenceModel;

class DeviceForward {
 public:
  virtual ~DeviceForward() = default;
  // Returns logits[n_seqs, vocab] in host memory (valid until the next forward), as InferenceModel::forward;
  // writes the batch's K and V into the device cache (its blocks were reserved by the engine).
  virtual const float* forward(const RaggedBatch& batch) = 0;
  virtual int64_t kv_bytes() const = 0;
  virtual std::string describe() const = 0;
};

struct DeviceForwardShape {
  int32_t kv_blocks = 0, kv_block_size = 0;
  int32_t max_tokens = 0, max_seqs = 0;  // per pass
};

// Copies the model to `device`. Throws DeviceError when that device is not there (no GPU, or a build without
// CUDA) and OutOfMemory when the weights, the KV cache and a max_tokens pass do not fit.
std::unique_ptr<DeviceForward> make_device_forward(const InferenceModel& model, Device device,
                                                   const DeviceForwardShape& shape);

// "cpu" or "cuda" / "cuda:N"; ConfigError for anything else.
Device parse_device(const std::string& name);

}  // namespace ds::inference
