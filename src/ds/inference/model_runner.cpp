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
#include "ds/ckpt/checkpoint_format.h"

namespace ds::inference {

namespace fs = std::filesystem;

// Note [Inference weights]
// The inference model holds its own copy of the weights, so a loaded Gpt2 is dropped once they are taken and a
// borrowed one may go away. The four matrices of each layer and the head (wte, transposed) are packed in column
// panels for cpu::panel_gemm: a decode pass multiplies a handful of rows, where sgemm spends its time packing and
// panel_gemm runs near the FMA peak (bm_kernels --only panel: 2.4x sgemm on the head of 16 rows, 3x on a layer's
// GEMMs). The token embedding reads wte's row `id` as column `id` of the packed head. Memory stays one copy of
// the model, accounted as param. With bf16 weights (--weights bf16) the panels hold bf16 pairs for
// cpu::panel_gemm_bf16: half the bytes, and twice the multiply rate on CPUs with AVX512_BF16; the GEMMs' inputs
// are rounded to bf16 (products accumulate in fp32), so logits differ from fp32 serving at bf16's precision.
InferenceModel::InferenceModel(Gpt2& model, WeightFormat weights) : weights_(weights) { take_weights(model); }

WeightFormat parse_weight_format(const std::string& name) {
  if (name == "fp32") return WeightFormat::fp32;
  if (name == "bf16") return WeightFormat::bf16;
  DS_THROW(ConfigError, "[serve] unknown weight format '{}'; expected fp32 (as trained) or bf16 (half the bytes, "
           "inputs of each product rounded to bf16)", name);
}

const char* weight_format_name(WeightFormat f) { return f == WeightFormat::bf16 ? "bf16" : "fp32"; }

void check_weights_on_device(WeightFormat weights, Device device) {
  DS_CHECK_AS(ConfigError, device.is_cpu() || weights == WeightFormat::fp32, "[serve] --weights {} is a CPU option; "
              "on {} the model runs in fp32: leave out --weights or use --device cpu", weight_format_name(weights),
              device.str());
}

void InferenceModel::gemm(float* out, const float* in, const Matrix& m, const float* bias, int rows) const {
  if (weights_ == WeightFormat::bf16) cpu::panel_gemm_bf16(out, in, m.words(), bias, rows, m.K, m.M);
  else cpu::panel_gemm(out, in, m.panels.data<float>(), bias, rows, m.K, m.M);
}

void InferenceModel::take_weights(Gpt2& model) {
  config_ = model.config();
  ParameterStore& ps = model.params();
  DS_ASSERT(ps.flat_params().numel() > 0, "inference needs the model's parameters resident");
  auto param = [&](const std::string& name) -> const Parameter& {
    const Parameter& p = ps.get(name);
    DS_ASSERT(p.data.dtype() == DType::f32, "inference weights must be fp32 ({})", name);
    return p;
  };
  auto vec = [&](const std::string& name) {
    const Parameter& p = param(name);
    Tensor t = Tensor::empty({p.numel()}, DType::f32, Category::param);
    std::memcpy(t.data<float>(), p.data.data<float>(), sizeof(float) * static_cast<size_t>(p.numel()));
    return t;
  };
  // w_is_rows_of_k: the [K, M] layout of the layers' Conv1D weights; wte is [V, C], the head's transpose.
  auto matrix = [&](const std::string& name, int K, int M, bool w_is_rows_of_k) {
    const Parameter& p = param(name);
    DS_ASSERT(p.numel() == int64_t(K) * M, "{} has {} values, expected {} x {}", name, p.numel(), K, M);
    if (weights_ == WeightFormat::bf16) {
      Matrix m{K, M, Tensor::empty({static_cast<int64_t>(cpu::panel_packed_bf16_words(K, M))}, DType::i32,
                                   Category::param)};
      cpu::pack_panels_bf16(static_cast<uint32_t*>(m.panels.raw()), p.data.data<float>(), K, M, w_is_rows_of_k);
      return m;
    }
    Matrix m{K, M, Tensor::empty({static_cast<int64_t>(cpu::panel_packed_floats(K, M))}, DType::f32, Category::param)};
    cpu::pack_panels(m.panels.data<float>(), p.data.data<float>(), K, M, w_is_rows_of_k);
    return m;
  };
  const int C = config_.n_embd;
  head_ = matrix("transformer.wte.weight", C, config_.vocab_size, false);
  wpe_ = vec("transformer.wpe.weight");
  lnf_w_ = vec("transformer.ln_f.weight");
  lnf_b_ = vec("transformer.ln_f.bias");
  layers_.clear();
  for (int l = 0; l < config_.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    Layer L;
    L.ln1_w = vec(p + "ln_1.weight");
    L.ln1_b = vec(p + "ln_1.bias");
    L.qkv = matrix(p + "attn.c_attn.weight", C, 3 * C, true);
    L.qkv_b = vec(p + "attn.c_attn.bias");
    L.proj = matrix(p + "attn.c_proj.weight", C, C, true);
    L.proj_b = vec(p + "attn.c_proj.bias");
    L.ln2_w = vec(p + "ln_2.weight");
    L.ln2_b = vec(p + "ln_2.bias");
    L.fc = matrix(p + "mlp.c_fc.weight", C, 4 * C, true);
    L.fc_b = vec(p + "mlp.c_fc.bias");
    L.fc2 = matrix(p + "mlp.c_proj.weight", 4 * C, C, true);
    L.fc2_b = vec(p + "mlp.c_proj.bias");
    layers_.push_back(std::move(L));
  }
}

InferenceModel::PlainWeights InferenceModel::plain_weights() const {
  DS_ASSERT(weights_ == WeightFormat::fp32, "a device copy of {} weights (check_weights_on_device refuses them)",
            weight_format_name(weights_));
  auto vec = [](const Tensor& t) {
    const float* p = t.data<float>();
    return std::vector<float>(p, p + t.numel());
  };
  auto rows_of_k = [](const Matrix& m) {
    std::vector<float> w(static_cast<size_t>(m.K) * static_cast<size_t>(m.M));
    cpu::unpack_panels(w.data(), m.panels.data<float>(), m.K, m.M, true);
    return w;
  };
  PlainWeights p;
  p.wte.resize(static_cast<size_t>(head_.K) * static_cast<size_t>(head_.M));
  cpu::unpack_panels(p.wte.data(), head_.panels.data<float>(), head_.K, head_.M, false);
  p.wpe = vec(wpe_);
  p.lnf_w = vec(lnf_w_);
  p.lnf_b = vec(lnf_b_);
  for (const Layer& L : layers_) {
    p.layers.push_back({vec(L.ln1_w), vec(L.ln1_b), rows_of_k(L.qkv), vec(L.qkv_b), rows_of_k(L.proj), vec(L.proj_b),
                        vec(L.ln2_w), vec(L.ln2_b), rows_of_k(L.fc), vec(L.fc_b), rows_of_k(L.fc2), vec(L.fc2_b)});
  }
  return p;
}

std::shared_ptr<InferenceModel> InferenceModel::load(const std::string& path, const std::string& arch,
                                                     WeightFormat weights) {
  DS_CHECK_AS(IoError, fs::exists(path), "[serve] model '{}' does not exist; give a checkpoint directory (dspeed "
              "train --save DIR) or a safetensors file (dspeed ckpt consolidate)", path);
  std::shared_ptr<InferenceModel> m(new InferenceModel());
  m->weights_ = weights;
  if (fs::is_directory(path)) {
    const CheckpointReader reader(path);
    const Gpt2Config config = arch.empty() ? Gpt2Config::from_json(reader.manifest().model, reader.tag_dir())
                                           : Gpt2Config::from_spec(arch);
    Gpt2 model(config, 1, /*with_grads=*/false);
    for (Parameter& p : model.params().all()) {
      const std::vector<float> values = reader.read_param(reader.param(p.name), "fp32");
      DS_CHECK_AS(IoError, static_cast<int64_t>(values.size()) == p.numel(), "[serve] '{}': '{}' has {} values but "
                  "the model needs {}; check --arch", reader.tag_dir(), p.name, values.size(), p.numel());
      std::memcpy(p.data.data<float>(), values.data(), values.size() * sizeof(float));
    }
    m->take_weights(model);
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
    Gpt2 model(config, 1, /*with_grads=*/false);
    for (Parameter& p : model.params().all()) {
      const std::vector<float> values = read_safetensors_f32(
          file, p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end()),
          "give a file with every parameter under its Hugging Face GPT-2 name (dspeed ckpt consolidate writes one), "
          "or the model's shape with --arch");
      std::memcpy(p.data.data<float>(), values.data(), values.size() * sizeof(float));
    }
    m->take_weights(model);
  }
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
  float* scores = grow(scratch.scores, static_cast<int64_t>(cpu::paged_attention_scratch_floats(max_pos, C, NH)));

  // Embeddings at each token's own position.
  for (int i = 0; i < N; ++i) {
    const int32_t pos = scratch.pos[static_cast<size_t>(i)];
    DS_ASSERT(pos < cfg.block_size, "position {} beyond the model's context {}", pos, cfg.block_size);
    const int32_t id = batch.input_ids[static_cast<size_t>(i)];
    DS_ASSERT(id >= 0 && id < V, "token id {} outside the vocabulary", id);
    const float* pe = wpe_.data<float>() + int64_t(pos) * C;
    float* xi = x + int64_t(i) * C;
    if (weights_ == WeightFormat::bf16) {  // column id of the packed head
      for (int c = 0; c < C; ++c) xi[c] = cpu::panel_bf16_at(head_.words(), C, c, id) + pe[c];
    } else {
      const float* te = head_.panels.data<float>() + int64_t(id / cpu::kPanelWidth) * C * cpu::kPanelWidth +
                        id % cpu::kPanelWidth;
      for (int c = 0; c < C; ++c) xi[c] = te[int64_t(c) * cpu::kPanelWidth] + pe[c];
    }
  }

  auto gemm = [this](float* out, const float* in, const Matrix& m, const Tensor& bias, int rows) {
    this->gemm(out, in, m, bias.data<float>(), rows);
  };
  for (int l = 0; l < cfg.n_layer; ++l) {
    const Layer& w = layers_[static_cast<size_t>(l)];
    cpu::layernorm_forward(h, mean, rstd, x, w.ln1_w.data<float>(), w.ln1_b.data<float>(), N, C);
    gemm(qkv, h, w.qkv, w.qkv_b, N);
    for (int i = 0; i < N; ++i) {  // K and V of the new tokens into their slots
      const int32_t pos = scratch.pos[static_cast<size_t>(i)];
      const int32_t* table = scratch.tables[static_cast<size_t>(batch.token_to_seq[static_cast<size_t>(i)])];
      cpu::from_f32(cache.slot(l, table[pos / bs], pos % bs), qkv + int64_t(i) * 3 * C + C, cache.dtype(),
                    2 * static_cast<size_t>(C));
    }
    cpu::paged_attention_forward(att, qkv, N, batch.token_to_seq.data(), scratch.pos.data(), scratch.tables.data(),
                                 cache.slot(l, 0, 0), cache.dtype(), bs, C, NH, scores, max_pos);
    gemm(h, att, w.proj, w.proj_b, N);
    cpu::add_inplace(x, h, static_cast<size_t>(N) * C);
    cpu::layernorm_forward(h, mean, rstd, x, w.ln2_w.data<float>(), w.ln2_b.data<float>(), N, C);
    gemm(mlp, h, w.fc, w.fc_b, N);
    cpu::gelu_forward(mlp, mlp, static_cast<size_t>(N) * 4 * C);
    gemm(h, mlp, w.fc2, w.fc2_b, N);
    cpu::add_inplace(x, h, static_cast<size_t>(N) * C);
  }

  // The head on each sequence's last new token only.
  float* last = att;  // [S, C]: the attention buffer is free again
  for (int s = 0; s < S; ++s) {
    const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
    std::memcpy(last + int64_t(s) * C, x + int64_t(q.start + q.n_tokens - 1) * C, sizeof(float) * C);
  }
  cpu::layernorm_forward(h, mean, rstd, last, lnf_w_.data<float>(), lnf_b_.data<float>(), S, C);
  this->gemm(logits, h, head_, nullptr, S);
}

}  // namespace ds::inference
