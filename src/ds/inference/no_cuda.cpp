// Linked when the build has no CUDA backend (DS_CUDA=OFF): asking the engine for a GPU (--device cuda) fails at
// start-up with what to rebuild or use instead.
#include "ds/core/error.h"
#include "ds/inference/device_forward.h"

namespace ds::inference {

std::unique_ptr<DeviceForward> make_device_forward(const InferenceModel&, Device device, const DeviceForwardShape&) {
  DS_THROW(DeviceError, "[serve] asked to run the model on {}, but this deepspeed.cpp was built without CUDA; "
           "rebuild with -DDS_CUDA=ON on a machine with the CUDA toolkit, or use --device cpu", device.str());
}

}  // namespace ds::inference
