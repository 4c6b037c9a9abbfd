// Where inference weights come from: a checkpoint directory, a safetensors file, or a model in memory. A source
// says the model's shape and hands out one weight of the spec (gpt2_spec.h) at a time as fp32 in its Hugging Face
// layout, so a forward places each straight into its own layout (CPU panels, GPU buffers) and no whole-model
// copy exists on the way.
#pragma once

#include <memory>
#include <string>

#include "ds/nn/models/gpt2.h"

namespace ds::inference {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const nn::Gpt2Config& config() const = 0;
  // Writes w.numel() values to dst. Throws IoError naming the file and the tensor when it is missing or has
  // another shape.
  virtual void read(const nn::Gpt2Weight& w, float* dst) const = 0;
  // For messages: the file or "a model in memory".
  virtual std::string describe() const = 0;
};

// A checkpoint directory (DIR/latest or DIR/<tag>, written by dspeed train --save) or a safetensors file of
// every parameter under its Hugging Face GPT-2 name (dspeed ckpt consolidate). The model's shape comes from the
// checkpoint manifest or the file's "ds_model" metadata; `arch` (a preset or model JSON, as dspeed train --model)
// overrides it and is needed for files without that metadata. The files stay mapped while the source lives.
// Throws IoError/ConfigError that name the file and what is missing.
std::shared_ptr<const WeightSource> open_weight_source(const std::string& path, const std::string& arch = "");

// The resident parameters of a model in memory, borrowed: the model must outlive the source.
std::shared_ptr<const WeightSource> model_weight_source(nn::Gpt2& model);

}  // namespace ds::inference
