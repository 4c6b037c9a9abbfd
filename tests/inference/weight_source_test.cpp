// Inference weights read straight from files by the weight spec: a safetensors file written from a model gives
// back its parameters bit for bit and the same logits as the model in memory; PyTorch's own parameters, loaded the
// same way, give PyTorch's logits; the CPU panels read back exactly what a device copy needs; a file of another
// shape, or a model placed on a device and used on the CPU, is a clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "common/scratch_dir.h"
#include "ds/ckpt/safetensors.h"
#include "ds/core/error.h"
#include "ds/inference/engine.h"
#include "ds/inference/weight_source.h"

namespace ds::inference {
namespace {

const std::string kGolden = std::string(DS_SOURCE_DIR) + "/tests/fixtures/gpt2_tiny_golden.safetensors";

nn::Gpt2Config small_config() {
  nn::Gpt2Config c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.vocab_size = 96;
  c.block_size = 24;
  return c;
}

class WeightSourceTest : public test::ScratchDirTest {
 protected:
  WeightSourceTest() : model(small_config(), 1, false) { model.init_weights(5); }
  // The model's parameters under their names, as dspeed ckpt consolidate writes them. `skew` transposes c_attn
  // (a file of another layout).
  std::string write_model(const std::string& name, bool with_meta = true, bool skew = false) {
    std::vector<ckpt::SafetensorsEntry> entries;
    for (const nn::Parameter& p : model.params().all()) {
      std::vector<int64_t> shape(p.shape.begin(), p.shape.end());
      if (skew && p.name.find("c_attn.weight") != std::string::npos) std::swap(shape[0], shape[1]);
      entries.push_back({p.name, "F32", shape, p.data.raw(), static_cast<size_t>(p.numel()) * sizeof(float)});
    }
    std::map<std::string, std::string> meta;
    if (with_meta) meta["ds_model"] = model.config().to_json().dump();
    ckpt::write_safetensors(path(name), entries, meta);
    return path(name);
  }
  nn::Gpt2 model;
};

// Logits of the last token of each prompt, each prompt its own sequence in one ragged pass.
std::vector<float> last_logits(std::shared_ptr<const InferenceModel> m,
                               const std::vector<std::vector<int32_t>>& prompts) {
  EngineConfig ec;
  ec.kv_block_size = 4;
  ec.kv_block_count = 64;
  InferenceEngine engine(std::move(m), ec);
  std::vector<uint64_t> uids;
  std::vector<std::span<const int32_t>> toks;
  for (size_t i = 0; i < prompts.size(); ++i) uids.push_back(i + 1), toks.emplace_back(prompts[i]);
  const std::span<const float> out = engine.put(uids, toks);
  return {out.begin(), out.end()};
}

TEST_F(WeightSourceTest, FileGivesBackTheParametersBitForBit) {
  const auto source = open_weight_source(write_model("m.safetensors"));
  EXPECT_EQ(source->config().to_json(), model.config().to_json());
  for (const nn::Gpt2Weight& w : model.config().weight_spec()) {
    std::vector<float> got(static_cast<size_t>(w.numel()));
    source->read(w, got.data());
    EXPECT_EQ(std::memcmp(got.data(), model.params().get(w.name).data.raw(), got.size() * sizeof(float)), 0)
        << w.name;
  }
}

TEST_F(WeightSourceTest, LoadedModelEqualsTheModelInMemory) {
  const auto loaded = InferenceModel::load(write_model("m.safetensors"));
  const auto in_memory = std::make_shared<const InferenceModel>(model);
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 2, 40}, {7}, {3, 3, 95, 0, 11, 64, 8, 23, 1}};
  EXPECT_EQ(last_logits(loaded, prompts), last_logits(in_memory, prompts));
}

// What a device forward copies from a model placed on the CPU: the panels unpacked, equal to the parameters.
TEST_F(WeightSourceTest, CpuPanelsReadBackExactly) {
  const InferenceModel placed(model);
  for (const nn::Gpt2Weight& w : model.config().weight_spec()) {
    std::vector<float> got(static_cast<size_t>(w.numel()));
    placed.weights().read(w, got.data());
    EXPECT_EQ(std::memcmp(got.data(), model.params().get(w.name).data.raw(), got.size() * sizeof(float)), 0)
        << w.name;
  }
}

// PyTorch's parameters (the golden fixture's "param.*"), loaded by the spec from a file, give PyTorch's logits
// for the last token of each row.
TEST_F(WeightSourceTest, PyTorchParametersGivePyTorchLogits) {
  const ckpt::SafetensorsFile golden = ckpt::SafetensorsFile::open(kGolden);
  auto meta = [&](const char* k) { return std::stoi(golden.metadata().at(k)); };
  nn::Gpt2Config c;
  c.n_layer = meta("n_layer"), c.n_head = meta("n_head"), c.n_embd = meta("n_embd");
  c.vocab_size = meta("vocab_size"), c.block_size = meta("block_size");
  std::vector<std::vector<float>> values;
  std::vector<ckpt::SafetensorsEntry> entries;
  for (const nn::Gpt2Weight& w : c.weight_spec()) {
    values.push_back(ckpt::read_safetensors_f32(golden, "param." + w.name));  // float64 in PyTorch, stored as f32
    entries.push_back({w.name, "F32", w.shape, values.back().data(), values.back().size() * sizeof(float)});
  }
  ckpt::write_safetensors(path("torch.safetensors"), entries, {{"ds_model", c.to_json().dump()}});
  const auto loaded = InferenceModel::load(path("torch.safetensors"));

  const std::vector<int32_t> ids = ckpt::read_safetensors_i32(golden, "input_ids");
  const std::vector<float> want = ckpt::read_safetensors_f32(golden, "logits");  // [B, T, V]
  const int B = 2, T = static_cast<int>(ids.size()) / B, V = c.vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (int b = 0; b < B; ++b) prompts.emplace_back(ids.begin() + b * T, ids.begin() + (b + 1) * T);
  const std::vector<float> got = last_logits(loaded, prompts);
  double max_diff = 0, max_ref = 0;
  for (int b = 0; b < B; ++b) {
    for (int v = 0; v < V; ++v) {
      const double ref = want[static_cast<size_t>((b * T + T - 1) * V + v)];
      max_diff = std::max(max_diff, std::abs(double(got[static_cast<size_t>(b * V + v)]) - ref));
      max_ref = std::max(max_ref, std::abs(ref));
    }
  }
  EXPECT_LE(max_diff / max_ref, 1e-4);
}

TEST_F(WeightSourceTest, AWeightOfAnotherShapeIsNamed) {
  const std::string file = write_model("skew.safetensors", true, true);
  try {
    InferenceModel::load(file);
    FAIL() << "a transposed c_attn loaded";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("transformer.h.0.attn.c_attn.weight"), std::string::npos) << what;
    EXPECT_NE(what.find("[32, 96]"), std::string::npos) << what;  // the model's
    EXPECT_NE(what.find("[96, 32]"), std::string::npos) << what;  // the file's
  }
}

TEST_F(WeightSourceTest, ShapeFromArchWhenTheFileHasNoMetadata) {
  const std::string file = write_model("nometa.safetensors", false);
  EXPECT_THROW(InferenceModel::load(file), ConfigError);
  const std::string arch = path("arch.json");
  write_bytes(arch, model.config().to_json().dump());
  EXPECT_EQ(InferenceModel::load(file, arch)->config().to_json(), model.config().to_json());
}

// Placed for a GPU, the model keeps its source (no CPU copy): it reads the file's values, and its CPU forward and
// a CPU engine refuse it. No GPU is needed to place it.
TEST_F(WeightSourceTest, ModelPlacedOnADeviceHasNoCpuForward) {
  const std::string file = write_model("m.safetensors");
  const auto placed = InferenceModel::load(file, "", WeightFormat::fp32, Device::cuda(0));
  EXPECT_EQ(placed->device(), Device::cuda(0));
  const nn::Gpt2Weight wte = model.config().weight_spec().front();
  std::vector<float> got(static_cast<size_t>(wte.numel()));
  placed->weights().read(wte, got.data());
  EXPECT_EQ(std::memcmp(got.data(), model.params().get(wte.name).data.raw(), got.size() * sizeof(float)), 0);
  EXPECT_THROW(last_logits(placed, {{1, 2}}), ConfigError);  // a CPU engine
  KvCache cache(2, 2, 16, 4, 4);
  RaggedBatch batch;
  const int32_t ids[] = {1}, table[] = {0};
  batch.add(ids, 0, table);
  InferenceModel::Scratch scratch;
  std::vector<float> logits(96);
  EXPECT_THROW(placed->forward(batch, cache, scratch, logits.data()), DeviceError);
  EXPECT_THROW(InferenceModel::load(file, "", WeightFormat::bf16, Device::cuda(0)), ConfigError);
}

}  // namespace
}  // namespace ds::inference
