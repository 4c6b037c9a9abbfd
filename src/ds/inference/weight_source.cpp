// The three weight sources. Each checks a weight's shape against the spec before it copies a byte, so a file of
// another model fails with both shapes and what to do, never with a short read.
#include "ds/inference/weight_source.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ds/ckpt/checkpoint_format.h"
#include "ds/ckpt/safetensors.h"
#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds::inference {

namespace fs = std::filesystem;

namespace {

class CheckpointSource final : public WeightSource {
 public:
  CheckpointSource(const std::string& path, const std::string& arch)
      : reader_(path),
        config_(arch.empty() ? nn::Gpt2Config::from_json(reader_.manifest().model, reader_.tag_dir())
                             : nn::Gpt2Config::from_spec(arch)) {}
  const nn::Gpt2Config& config() const override { return config_; }
  void read(const nn::Gpt2Weight& w, float* dst) const override {
    const ckpt::CheckpointParam& p = reader_.param(w.name);
    DS_CHECK_AS(IoError, p.shape == w.shape, "[serve] '{}': '{}' has shape {} but the model needs {}; check --arch",
                reader_.tag_dir(), w.name, ckpt::checkpoint_shape_str(p.shape), ckpt::checkpoint_shape_str(w.shape));
    reader_.read_param(p, "fp32", dst);
  }
  std::string describe() const override { return reader_.tag_dir(); }

 private:
  ckpt::CheckpointReader reader_;
  nn::Gpt2Config config_;
};

nn::Gpt2Config config_of_file(const ckpt::SafetensorsFile& file, const std::string& path, const std::string& arch) {
  if (!arch.empty()) return nn::Gpt2Config::from_spec(arch);
  const auto it = file.metadata().find("ds_model");
  DS_CHECK_AS(ConfigError, it != file.metadata().end(), "[serve] '{}' does not say the model's shape (no "
              "\"ds_model\" metadata); give it with --arch (a preset such as gpt2-tiny, or a model JSON file)", path);
  nlohmann::json j;
  const std::string problem = parse_json_bounded(it->second, JsonLimits{}, j);
  DS_CHECK_AS(IoError, problem.empty(), "[serve] '{}': its \"ds_model\" metadata is not valid JSON ({}); give "
              "--arch", path, problem);
  return nn::Gpt2Config::from_json(j, path + " (ds_model metadata)");
}

class SafetensorsSource final : public WeightSource {
 public:
  SafetensorsSource(const std::string& path, const std::string& arch)
      : file_(ckpt::SafetensorsFile::open(path)), config_(config_of_file(file_, path, arch)) {}
  const nn::Gpt2Config& config() const override { return config_; }
  void read(const nn::Gpt2Weight& w, float* dst) const override {
    const std::vector<float> values = ckpt::read_safetensors_f32(
        file_, w.name, w.shape,
        "give a file with every parameter under its Hugging Face GPT-2 name (dspeed ckpt consolidate writes one), "
        "or the model's shape with --arch");
    std::memcpy(dst, values.data(), values.size() * sizeof(float));
  }
  std::string describe() const override { return file_.path(); }

 private:
  ckpt::SafetensorsFile file_;
  nn::Gpt2Config config_;
};

class ModelSource final : public WeightSource {
 public:
  explicit ModelSource(nn::Gpt2& model) : model_(model) {
    DS_ASSERT(model.params().flat_params().numel() > 0, "inference needs the model's parameters resident");
  }
  const nn::Gpt2Config& config() const override { return model_.config(); }
  void read(const nn::Gpt2Weight& w, float* dst) const override {
    const nn::Parameter& p = (w.expert >= 0 ? model_.expert_params() : model_.params()).get(w.name);
    DS_ASSERT(p.data.dtype() == DType::f32, "inference weights must be fp32 ({})", w.name);
    DS_ASSERT(p.numel() == w.numel(), "{} has {} values, the spec {}", w.name, p.numel(), w.numel());
    std::memcpy(dst, p.data.data<float>(), sizeof(float) * static_cast<size_t>(p.numel()));
  }
  std::string describe() const override { return "a model in memory"; }

 private:
  nn::Gpt2& model_;
};

}  // namespace

std::shared_ptr<const WeightSource> open_weight_source(const std::string& path, const std::string& arch) {
  DS_CHECK_AS(IoError, fs::exists(path), "[serve] model '{}' does not exist; give a checkpoint directory (dspeed "
              "train --save DIR) or a safetensors file (dspeed ckpt consolidate)", path);
  if (fs::is_directory(path)) return std::make_shared<CheckpointSource>(path, arch);
  return std::make_shared<SafetensorsSource>(path, arch);
}

std::shared_ptr<const WeightSource> model_weight_source(nn::Gpt2& model) {
  return std::make_shared<ModelSource>(model);
}

}  // namespace ds::inference
