// Napkin math for one pass of N new tokens in S sequences (C channels, L layers, V vocabulary, context P):
// GEMMs 24 L N C^2 FLOPs (qkv 6, proj 2, MLP 16), attention about 4 L N P C, head 2 S V C. For gpt2-tiny
// (L4, C128, V 50257) the head dominates a decode pass (12.9 MFLOP per sequence against 1.6 in the layers), which
// is why only the last token of each sequence reaches it; a single decode is bound by reading wte (25.7 MB fp32).
#include "ds/inference/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ds/ckpt/safetensors.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/runtime/checkpoint.h"

namespace ds::inference {

namespace fs = std::filesystem;

InferenceModel::InferenceModel(Gpt2& model) : model_(&model) { bind(); }

void InferenceModel::bind() {
  ParameterStore& ps = model_->params();
  DS_ASSERT(ps.flat_params().numel() > 0, "inference needs the model's parameters resident");
  auto w = [&](const std::string& name) -> const float* {
    const Parameter& p = ps.get(name);
    DS_ASSERT(p.data.dtype() == DType::f32, "inference weights must be fp32 ({})", name);
    return p.data.data<float>();
  };
  wte_ = w("transformer.wte.weight");
  wpe_ = w("transformer.wpe.weight");
  lnf_w_ = w("transformer.ln_f.weight");
  lnf_b_ = w("transformer.ln_f.bias");
  layers_.clear();
  for (int l = 0; l < config().n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    layers_.push_back({w(p + "ln_1.weight"), w(p + "ln_1.bias"), w(p + "attn.c_attn.weight"), w(p + "attn.c_attn.bias"),
                       w(p + "attn.c_proj.weight"), w(p + "attn.c_proj.bias"), w(p + "ln_2.weight"),
                       w(p + "ln_2.bias"), w(p + "mlp.c_fc.weight"), w(p + "mlp.c_fc.bias"), w(p + "mlp.c_proj.weight"),
                       w(p + "mlp.c_proj.bias")});
  }
}

std::shared_ptr<InferenceModel> InferenceModel::load(const std::string& path, const std::string& arch) {
  DS_CHECK_AS(IoError, fs::exists(path), "[serve] model '{}' does not exist; give a checkpoint directory (dspeed "
              "train --save DIR) or a safetensors file (dspeed ckpt consolidate)", path);
  std::shared_ptr<InferenceModel> m(new InferenceModel());
  if (fs::is_directory(path)) {
    const CheckpointReader reader(path);
    const Gpt2Config config = arch.empty() ? Gpt2Config::from_json(reader.manifest().model, reader.tag_dir())
                                           : Gpt2Config::from_spec(arch);
    m->owned_ = std::make_unique<Gpt2>(config, 1, /*with_grads=*/false);
    for (Parameter& p : m->owned_->params().all()) {
      const std::vector<float> values = reader.read_param(reader.param(p.name), "fp32");
      DS_CHECK_AS(IoError, static_cast<int64_t>(values.size()) == p.numel(), "[serve] '{}': '{}' has {} values but "
                  "the model needs {}; check --arch", reader.tag_dir(), p.name, values.size(), p.numel());
      std::memcpy(p.data.data<float>(), values.data(), values.size() * sizeof(float));
    }
  } else {
    const SafetensorsFile file = SafetensorsFile::open(path);
    Gpt2Config config;
    if (!arch.empty()) {
      config = Gpt2Config::from_spec(arch);
    } else {
      const auto it = file.metadata().find("ds_model");
      DS_CHECK_AS(ConfigError, it != file.metadata().end(), "[serve] '{}' does not say the model's shape (no "
                  "\"ds_model\" metadata); give it with --arch (a preset such as gpt2-tiny, or a model JSON file)",
                  path);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(it->second);
      } catch (const nlohmann::json::parse_error& e) {
        DS_THROW(IoError, "[serve] '{}': its \"ds_model\" metadata is not JSON ({}); give --arch", path, e.what());
      }
      config = Gpt2Config::from_json(j, path + " (ds_model metadata)");
    }
    m->owned_ = std::make_unique<Gpt2>(config, 1, /*with_grads=*/false);
    for (Parameter& p : m->owned_->params().all()) {
      const std::vector<float> values = read_safetensors_f32(
          file, p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end()),
          "give a file with every parameter under its Hugging Face GPT-2 name (dspeed ckpt consolidate writes one), "
          "or the model's shape with --arch");
      std::memcpy(p.data.data<float>(), values.data(), values.size() * sizeof(float));
    }
  }
  m->model_ = m->owned_.get();
  m->bind();
  return m;
}

void InferenceModel::forward(const RaggedBatch& batch, KvCache& cache, Scratch& scratch, float* logits) const {
  const Gpt2Config& cfg = config();
  const int C = cfg.n_embd, NH = cfg.n_head, V = cfg.vocab_size;
  const int N = batch.n_tokens(), S = batch.n_seqs();
  DS_ASSERT(N > 0 && S > 0, "empty ragged batch");
  const int32_t bs = cache.kv_block_size();
  auto grow = [](std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  };
  float* x = grow(scratch.x, int64_t(N) * C);
  float* h = grow(scratch.h, int64_t(N) * C + 2 * int64_t(N));  // LN output, then mean and rstd
  float* mean = h + int64_t(N) * C;
  float* rstd = mean + N;
  float* qkv = grow(scratch.qkv, int64_t(N) * 3 * C);
  float* mlp = grow(scratch.mlp, int64_t(N) * 4 * C);
  float* att = grow(scratch.att, int64_t(N) * C);

  // Each token's position, and each sequence's block table, as the attention kernel takes them.
  scratch.pos.resize(static_cast<size_t>(N));
  scratch.tables.resize(static_cast<size_t>(S));
  int32_t max_pos = 1;
  for (int s = 0; s < S; ++s) {
    const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
    scratch.tables[static_cast<size_t>(s)] = q.block_table;
    for (int j = 0; j < q.n_tokens; ++j) scratch.pos[static_cast<size_t>(q.start + j)] = q.seen_tokens + j;
    max_pos = std::max(max_pos, q.seen_tokens + q.n_tokens);
  }
  float* scores = grow(scratch.scores, static_cast<int64_t>(cpu::paged_attention_scratch_floats(max_pos, NH)));

  // Embeddings at each token's own position.
  for (int i = 0; i < N; ++i) {
    const int32_t pos = scratch.pos[static_cast<size_t>(i)];
    DS_ASSERT(pos < cfg.block_size, "position {} beyond the model's context {}", pos, cfg.block_size);
    const int32_t id = batch.input_ids[static_cast<size_t>(i)];
    DS_ASSERT(id >= 0 && id < V, "token id {} outside the vocabulary", id);
    const float* te = wte_ + int64_t(id) * C;
    const float* pe = wpe_ + int64_t(pos) * C;
    float* xi = x + int64_t(i) * C;
    for (int c = 0; c < C; ++c) xi[c] = te[c] + pe[c];
  }

  for (int l = 0; l < cfg.n_layer; ++l) {
    const Layer& w = layers_[static_cast<size_t>(l)];
    cpu::layernorm_forward(h, mean, rstd, x, w.ln1_w, w.ln1_b, N, C);
    cpu::matmul_forward(qkv, h, w.qkv_w, w.qkv_b, N, C, 3 * C);
    for (int i = 0; i < N; ++i) {  // K and V of the new tokens into their slots
      const int32_t pos = scratch.pos[static_cast<size_t>(i)];
      const int32_t* table = scratch.tables[static_cast<size_t>(batch.token_to_seq[static_cast<size_t>(i)])];
      float* slot = cache.slot(l, table[pos / bs], pos % bs);
      std::memcpy(slot, qkv + int64_t(i) * 3 * C + C, sizeof(float) * 2 * static_cast<size_t>(C));
    }
    cpu::paged_attention_forward(att, qkv, N, batch.token_to_seq.data(), scratch.pos.data(), scratch.tables.data(),
                                 cache.slot(l, 0, 0), bs, C, NH, scores, max_pos);
    cpu::matmul_forward(h, att, w.proj_w, w.proj_b, N, C, C);
    cpu::add_inplace(x, h, static_cast<size_t>(N) * C);
    cpu::layernorm_forward(h, mean, rstd, x, w.ln2_w, w.ln2_b, N, C);
    cpu::matmul_forward(mlp, h, w.fc_w, w.fc_b, N, C, 4 * C);
    cpu::gelu_forward(mlp, mlp, static_cast<size_t>(N) * 4 * C);
    cpu::matmul_forward(h, mlp, w.fc2_w, w.fc2_b, N, 4 * C, C);
    cpu::add_inplace(x, h, static_cast<size_t>(N) * C);
  }

  // The head on each sequence's last new token only.
  float* last = att;  // [S, C]: the attention buffer is free again
  for (int s = 0; s < S; ++s) {
    const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
    std::memcpy(last + int64_t(s) * C, x + int64_t(q.start + q.n_tokens - 1) * C, sizeof(float) * C);
  }
  cpu::layernorm_forward(h, mean, rstd, last, lnf_w_, lnf_b_, S, C);
  cpu::logits_forward(logits, h, wte_, S, C, V);
}

}  // namespace ds::inference
