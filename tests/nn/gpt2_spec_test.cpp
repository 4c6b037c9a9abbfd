// The GPT-2 weight spec against independent sources: PyTorch's parameter names and shapes (the golden fixture of
// scripts/gen_fixtures.py), the published size of GPT-2 small, and the training model built from the layers.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "ds/ckpt/safetensors.h"
#include "ds/core/rng.h"
#include "ds/nn/models/gpt2.h"

using namespace ds;

namespace {

const std::string kGolden = std::string(DS_SOURCE_DIR) + "/tests/fixtures/gpt2_tiny_golden.safetensors";

TEST(Gpt2Spec, NamesAndShapesArePyTorchs) {
  const ckpt::SafetensorsFile file = ckpt::SafetensorsFile::open(kGolden);
  auto meta = [&](const char* k) { return std::stoi(file.metadata().at(k)); };
  std::map<std::string, std::vector<int64_t>> torch;  // "param.<name>" entries: PyTorch's state dict
  for (const std::string& name : file.names())
    if (name.rfind("param.", 0) == 0) torch[name.substr(6)] = file.get(name).shape;
  ASSERT_FALSE(torch.empty());
  const std::vector<nn::Gpt2Weight> spec =
      nn::gpt2_weight_spec(meta("n_layer"), meta("n_embd"), meta("vocab_size"), meta("block_size"));
  std::map<std::string, std::vector<int64_t>> ours;
  for (const nn::Gpt2Weight& w : spec) ours[w.name] = w.shape;
  EXPECT_EQ(ours, torch);
  EXPECT_EQ(ours.size(), spec.size()) << "a name appears twice in the spec";
}

TEST(Gpt2Spec, CountsGpt2SmallAsPublished) {
  // GPT-2 small with its head tied to wte: 124,439,808 parameters.
  EXPECT_EQ(nn::Gpt2Config::preset("gpt2").num_params(), 124439808);
}

TEST(Gpt2Spec, SlotsAreDenseAndDistinct) {
  const int L = 3;
  const std::vector<nn::Gpt2Weight> spec = nn::gpt2_weight_spec(L, 16, 50, 8);
  ASSERT_EQ(static_cast<int>(spec.size()), nn::gpt2_weight_slots(L));
  std::vector<int> seen(spec.size(), 0);
  for (const nn::Gpt2Weight& w : spec) {
    const int k = nn::gpt2_weight_slot(w.role, w.layer);
    ASSERT_GE(k, 0);
    ASSERT_LT(k, nn::gpt2_weight_slots(L));
    ++seen[static_cast<size_t>(k)];
    EXPECT_EQ(nn::is_layer_role(w.role), w.layer >= 0) << w.name;
  }
  for (const int n : seen) EXPECT_EQ(n, 1);
}

TEST(Gpt2Spec, TrainingModelDeclaresTheSpec) {
  nn::Gpt2Config c = nn::Gpt2Config::preset("gpt2-tiny");
  c.vocab_size = 300;
  nn::Gpt2 model(c, 1, false);
  const std::vector<nn::Gpt2Weight> spec = c.weight_spec();
  ASSERT_EQ(model.params().all().size(), spec.size());
  for (size_t i = 0; i < spec.size(); ++i) {
    const nn::Parameter& p = model.params().all()[i];
    EXPECT_EQ(p.name, spec[i].name);
    EXPECT_EQ(std::vector<int64_t>(p.shape.begin(), p.shape.end()), spec[i].shape) << p.name;
  }
}

// GPT-2's initialisation, by role: LayerNorm weights 1, biases 0, weights N(0, 0.02), the residual projections
// (attn.c_proj, mlp.c_proj) N(0, 0.02 / sqrt(2 n_layer)).
TEST(Gpt2Spec, InitialisesByRole) {
  nn::Gpt2Config c = nn::Gpt2Config::preset("gpt2-tiny");
  c.vocab_size = 300;
  nn::Gpt2 model(c, 1, false);
  model.init_weights(11);
  const std::vector<nn::Gpt2Weight> spec = c.weight_spec();
  for (size_t i = 0; i < spec.size(); ++i) {
    const nn::Parameter& p = model.params().all()[i];
    const float* v = p.data.data<float>();
    const std::string& n = p.name;
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    const bool ln = n.find(".ln_") != std::string::npos;
    if (bias || ln) {
      const float want = bias ? 0.0f : 1.0f;
      for (int64_t k = 0; k < p.numel(); ++k) ASSERT_EQ(v[k], want) << n;
      continue;
    }
    double sum = 0, sq = 0;
    for (int64_t k = 0; k < p.numel(); ++k) sum += v[k], sq += double(v[k]) * v[k];
    const double mean = sum / double(p.numel());
    const double stdv = std::sqrt(sq / double(p.numel()) - mean * mean);
    const bool proj = n.find(".c_proj.weight") != std::string::npos;
    const double want = proj ? 0.02 / std::sqrt(2.0 * c.n_layer) : 0.02;
    EXPECT_NEAR(stdv, want, 0.05 * want) << n;  // >= 16384 samples: the standard error is under 1%
  }
}

// The values themselves: a replay of the same seed by GPT-2's rule written on names (the rule the roles encode),
// drawing in parameter order, gives every initial value bit for bit.
TEST(Gpt2Spec, InitialValuesAreTheNameRulesReplayed) {
  nn::Gpt2Config c = nn::Gpt2Config::preset("gpt2-tiny");
  c.vocab_size = 300;
  nn::Gpt2 model(c, 1, false);
  model.init_weights(11);
  Rng rng(11);
  const float proj_std = 0.02f / std::sqrt(2.0f * c.n_layer);
  for (const nn::Parameter& p : model.params().all()) {
    const bool is_ln = p.name.find(".ln_") != std::string::npos;
    const bool is_bias = p.name.size() > 5 && p.name.substr(p.name.size() - 5) == ".bias";
    const bool is_proj = p.name.find(".c_proj.weight") != std::string::npos;
    const float stdv = is_proj ? proj_std : 0.02f;
    for (int64_t k = 0; k < p.numel(); ++k) {
      const float want = is_ln && !is_bias ? 1.0f : is_bias ? 0.0f : stdv * rng.normal();
      ASSERT_EQ(p.data.data<float>()[k], want) << p.name << " [" << k << "]";
    }
  }
}

}  // namespace
