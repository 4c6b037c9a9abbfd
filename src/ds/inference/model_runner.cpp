// Napkin math for one pass of N new tokens in S sequences (C channels, L layers, V vocabulary, context P):
// GEMMs 24 L N C^2 FLOPs (qkv 6, proj 2, MLP 16), attention about 4 L N P C, head 2 S V C. For gpt2-tiny
// (L4, C128, V 50257) the head dominates a decode pass (12.9 MFLOP per sequence against 1.6 in the layers), which
// is why only the last token of each sequence reaches it; a single decode is bound by reading wte (25.7 MB fp32).
#include "ds/inference/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ds/core/error.h"
#include "ds/inference/ragged_forward.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::inference {

// Note [Inference weights]
// Placed on the CPU, the inference model holds its own copy of the weights, read from its source one tensor at a
// time (no training model is built on the way, and a borrowed one may go away). The four matrices of each layer
// and the head (wte, transposed) are packed in column panels for cpu::panel_gemm: a decode pass multiplies a
// handful of rows, where sgemm spends its time packing and panel_gemm runs near the FMA peak (bm_kernels --only panel: 2.4x sgemm on the head of 16 rows, 3x on a layer's
// GEMMs). The token embedding reads wte's row `id` as column `id` of the packed head. Memory stays one copy of
// the model, accounted as param. With bf16 weights (--weights bf16) the panels hold bf16 pairs for
// cpu::panel_gemm_bf16: half the bytes, and twice the multiply rate on CPUs with AVX512_BF16; the GEMMs' inputs
// are rounded to bf16 (products accumulate in fp32), so logits differ from fp32 serving at bf16's precision.
// The CPU panels read back in the spec's layouts: what a device copy of a CPU-placed model is made from.
class InferenceModel::PanelSource final : public WeightSource {
 public:
  explicit PanelSource(const InferenceModel& m) : m_(m) {}
  const nn::Gpt2Config& config() const override { return m_.config_; }
  void read(const nn::Gpt2Weight& w, float* dst) const override {
    DS_ASSERT(m_.weights_ == WeightFormat::fp32, "a device copy of {} weights (check_weights_on_device refuses "
              "them)", weight_format_name(m_.weights_));
    const bool moe = static_cast<int>(w.role) >= static_cast<int>(nn::Gpt2Role::moe_gate_w);
    const Placed& p = moe ? m_.at_moe(w.role, w.layer, w.expert) : m_.at(w.role, w.layer);
    if (p.K == 0) std::memcpy(dst, p.values.data<float>(), sizeof(float) * static_cast<size_t>(p.values.numel()));
    else cpu::unpack_panels(dst, p.values.data<float>(), p.K, p.M, w.role != nn::Gpt2Role::wte);
  }
  std::string describe() const override { return "the CPU model"; }

 private:
  const InferenceModel& m_;
};

InferenceModel::InferenceModel(std::shared_ptr<const WeightSource> source, WeightFormat weights, Device device,
                               nn::TensorParallelGroup* tp)
    : config_(source->config()), weights_(weights), device_(device), tp_(tp && tp->size() > 1 ? tp : nullptr) {
  DS_CHECK_AS(ConfigError, !config_.moe.enabled() || !tp_, "[serve] {} is a Mixture-of-Experts model: it is "
              "served on one rank (no --tensor-parallel)", config_.name);
  if (tp_) {
    DS_CHECK_AS(ConfigError, device.is_cpu(), "[serve] tensor-parallel inference runs on the CPU forward; use "
                "--device cpu or one rank");
    DS_CHECK_AS(ConfigError, config_.n_head % tp_->size() == 0, "[serve] tensor-parallel size {} does not divide "
                "n_head {}: each rank must hold whole attention heads", tp_->size(), config_.n_head);
  }
  if (device.is_cpu()) {
    place(*source);
    source_ = std::make_shared<PanelSource>(*this);
  } else {
    check_weights_on_device(weights, device);
    source_ = std::move(source);
  }
}

InferenceModel::InferenceModel(nn::Gpt2& model, WeightFormat weights, nn::TensorParallelGroup* tp)
    : InferenceModel(model_weight_source(model), weights, Device::cpu(), tp) {}

const WeightSource& InferenceModel::weights() const {
  DS_CHECK_AS(ConfigError, !tp_, "[serve] a tensor-parallel model holds shares of its weights; they cannot be read "
              "back whole");
  return *source_;
}

std::shared_ptr<InferenceModel> InferenceModel::load(const std::string& path, const std::string& arch,
                                                     WeightFormat weights, Device device,
                                                     nn::TensorParallelGroup* tp) {
  return std::make_shared<InferenceModel>(open_weight_source(path, arch), weights, device, tp);
}

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

void InferenceModel::gemm(float* out, const float* in, const Placed& m, const float* bias, int rows) const {
  if (weights_ == WeightFormat::bf16) cpu::panel_gemm_bf16(out, in, m.words(), bias, rows, m.K, m.M);
  else cpu::panel_gemm(out, in, m.values.data<float>(), bias, rows, m.K, m.M);
}

namespace {
// The matrices of the spec and how they are packed: wte as the head's [C, V] (the transpose of its [V, C] rows),
// the Conv1D weights as they are ([in, out], rows of K).
bool is_matrix(nn::Gpt2Role r) {
  using R = nn::Gpt2Role;
  return r == R::wte || r == R::qkv_w || r == R::proj_w || r == R::fc_w || r == R::fc2_w || r == R::moe_gate_w ||
         r == R::moe_coef_w || r == R::expert_fc_w || r == R::expert_fc2_w;
}
bool is_moe_role(nn::Gpt2Role r) { return static_cast<int>(r) >= static_cast<int>(nn::Gpt2Role::moe_gate_w); }
}  // namespace

// Note [Tensor-parallel inference]
// Under tensor parallelism each rank holds the QKV and FC weights' columns of its heads (column-parallel, with
// their biases) and the rows of the two output projections that multiply them (row-parallel), as in training
// (nn/tensor_parallel.h); LayerNorms, the output projections' biases, wpe and wte (embedding and head) are whole on
// every rank. A pass runs each layer on this rank's n_head / t heads, its KV cache holding only theirs, and sums the
// output projections' partial products over the group (two all-reduces of [N, C] per layer, the bias added on
// rank 0's part). The residual stream, and so the head's logits, are then the same on every rank, and so are the
// greedy tokens.
TpSplit InferenceModel::tp_split_of(const nn::Gpt2Weight& w) const {
  if (!tp_) return {};
  const int r = tp_->rank(), t = tp_->size();
  const Shape whole(w.shape.begin(), w.shape.end());
  switch (w.role) {
    case nn::Gpt2Role::qkv_w: return {1, 3, r, t, whole};
    case nn::Gpt2Role::qkv_b: return {0, 3, r, t, whole};
    case nn::Gpt2Role::fc_w: return {1, 1, r, t, whole};
    case nn::Gpt2Role::fc_b: return {0, 1, r, t, whole};
    case nn::Gpt2Role::proj_w: case nn::Gpt2Role::fc2_w: return {0, 1, r, t, whole};
    default: return {};
  }
}

const InferenceModel::Placed& InferenceModel::at(nn::Gpt2Role role, int layer) const {
  return placed_[static_cast<size_t>(nn::gpt2_weight_slot(role, layer))];
}

const InferenceModel::Placed& InferenceModel::at_moe(nn::Gpt2Role role, int layer, int expert) const {
  return moe_placed_.at({layer, static_cast<int>(role), expert});
}

void InferenceModel::place(const WeightSource& source) {
  const std::vector<nn::Gpt2Weight> spec = config_.weight_spec();
  placed_.assign(static_cast<size_t>(nn::gpt2_weight_slots(config_.n_layer)), Placed{});
  std::vector<float> values, share;  // one weight at a time
  for (nn::Gpt2Weight w : spec) {
    values.resize(static_cast<size_t>(w.numel()));
    source.read(w, values.data());
    if (const TpSplit split = tp_split_of(w); split.split()) {  // keep this rank's share
      share.resize(static_cast<size_t>(split.local_shape(split.full).numel()));
      split.shard(values.data(), share.data());
      values.swap(share);
      const Shape local = split.local_shape(split.full);
      w.shape.assign(local.begin(), local.end());
    }
    Placed& p = is_moe_role(w.role) ? moe_placed_[{w.layer, static_cast<int>(w.role), w.expert}]
                                    : placed_[static_cast<size_t>(nn::gpt2_weight_slot(w.role, w.layer))];
    if (!is_matrix(w.role)) {
      p.values = Tensor::empty({w.numel()}, DType::f32, Category::param);
      std::memcpy(p.values.data<float>(), values.data(), values.size() * sizeof(float));
      continue;
    }
    const bool rows_of_k = w.role != nn::Gpt2Role::wte;
    p.K = static_cast<int>(rows_of_k ? w.shape[0] : w.shape[1]);
    p.M = static_cast<int>(rows_of_k ? w.shape[1] : w.shape[0]);
    if (weights_ == WeightFormat::bf16) {
      p.values = Tensor::empty({static_cast<int64_t>(cpu::panel_packed_bf16_words(p.K, p.M))}, DType::i32,
                               Category::param);
      cpu::pack_panels_bf16(static_cast<uint32_t*>(p.values.raw()), values.data(), p.K, p.M, rows_of_k);
    } else {
      p.values = Tensor::empty({static_cast<int64_t>(cpu::panel_packed_floats(p.K, p.M))}, DType::f32,
                               Category::param);
      cpu::pack_panels(p.values.data<float>(), values.data(), p.K, p.M, rows_of_k);
    }
  }
}

// The CPU step set of gpt2_ragged_forward (ragged_forward.h): the pass's buffers in Scratch, GEMMs on the panels.
struct InferenceModel::CpuSteps {
  const InferenceModel& m;
  const RaggedBatch& batch;
  KvCache& cache;
  Scratch& sc;
  float* logits;
  int N = 0, S = 0, C = 0, NH = 0;
  int Cl = 0, NHl = 0;  // this rank's width and heads of the attention and the MLP (tensor parallelism)
  int R = 0;  // rows of logits: one per sequence, or one per new token for those that want all
  int32_t max_pos = 1;
  float* buf[5] = {};  // by PassBuffer
  float *mean = nullptr, *rstd = nullptr, *scores = nullptr;

  float* at(PassBuffer b) const { return buf[static_cast<int>(b)]; }
  const float* vec(int layer, nn::Gpt2Role r) const { return m.at(r, layer).values.data<float>(); }

  void prepare() {
    const nn::Gpt2Config& cfg = m.config();
    C = cfg.n_embd, NH = cfg.n_head, N = batch.n_tokens(), S = batch.n_seqs();
    Cl = C / m.tp_size(), NHl = NH / m.tp_size();
    DS_ASSERT(N > 0 && S > 0, "empty ragged batch");
    R = 0;
    for (int s = 0; s < S; ++s) R += batch.wants_all_logits(s) ? batch.seqs[static_cast<size_t>(s)].n_tokens : 1;
    auto grow = [](std::vector<float>& v, int64_t n) {
      if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
      return v.data();
    };
    buf[static_cast<int>(PassBuffer::x)] = grow(sc.x, int64_t(N) * C);
    buf[static_cast<int>(PassBuffer::h)] = grow(sc.h, int64_t(N) * C);
    buf[static_cast<int>(PassBuffer::qkv)] = grow(sc.qkv, int64_t(N) * 3 * Cl);
    buf[static_cast<int>(PassBuffer::att)] = grow(sc.att, int64_t(N) * Cl);
    buf[static_cast<int>(PassBuffer::mlp)] = grow(sc.mlp, int64_t(N) * 4 * Cl);
    mean = grow(sc.stats, 2 * int64_t(N));
    rstd = mean + N;
    // Each token's position, and each sequence's block table, as the attention kernel takes them.
    sc.pos.resize(static_cast<size_t>(N));
    sc.tables.resize(static_cast<size_t>(S));
    for (int s = 0; s < S; ++s) {
      const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
      sc.tables[static_cast<size_t>(s)] = q.block_table;
      for (int j = 0; j < q.n_tokens; ++j) sc.pos[static_cast<size_t>(q.start + j)] = q.seen_tokens + j;
      max_pos = std::max(max_pos, q.seen_tokens + q.n_tokens);
    }
    scores = grow(sc.scores, static_cast<int64_t>(cpu::paged_attention_scratch_floats(max_pos, Cl, NHl)));
  }

  void embed(PassBuffer out) {
    const nn::Gpt2Config& cfg = m.config();
    const Placed& head = m.at(nn::Gpt2Role::wte, -1);
    const float* wpe = vec(-1, nn::Gpt2Role::wpe);
    for (int i = 0; i < N; ++i) {
      const int32_t pos = sc.pos[static_cast<size_t>(i)];
      DS_ASSERT(pos < cfg.block_size, "position {} beyond the model's context {}", pos, cfg.block_size);
      const int32_t id = batch.input_ids[static_cast<size_t>(i)];
      DS_ASSERT(id >= 0 && id < cfg.vocab_size, "token id {} outside the vocabulary", id);
      const float* pe = wpe + int64_t(pos) * C;
      float* xi = at(out) + int64_t(i) * C;
      if (m.weights_ == WeightFormat::bf16) {  // column id of the packed head
        for (int c = 0; c < C; ++c) xi[c] = cpu::panel_bf16_at(head.words(), C, c, id) + pe[c];
      } else {
        const float* te = head.values.data<float>() + int64_t(id / cpu::kPanelWidth) * C * cpu::kPanelWidth +
                          id % cpu::kPanelWidth;
        for (int c = 0; c < C; ++c) xi[c] = te[int64_t(c) * cpu::kPanelWidth] + pe[c];
      }
    }
  }
  void layernorm(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role w, nn::Gpt2Role b) {
    cpu::layernorm_forward(at(out), mean, rstd, at(in), vec(l, w), vec(l, b), N, C);
  }
  void linear(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role w, nn::Gpt2Role b) {
    m.gemm(at(out), at(in), m.at(w, l), vec(l, b), N);
  }
  void linear_gelu(PassBuffer out, PassBuffer in, int l, nn::Gpt2Role w, nn::Gpt2Role b) {
    const Placed& W = m.at(w, l);
    m.gemm(at(out), at(in), W, vec(l, b), N);
    cpu::gelu_forward(at(out), at(out), static_cast<size_t>(N) * W.M);
  }
  void linear_residual(PassBuffer x, PassBuffer in, PassBuffer tmp, int l, nn::Gpt2Role w, nn::Gpt2Role b) {
    if (!m.tp_) {
      m.gemm(at(tmp), at(in), m.at(w, l), vec(l, b), N);
    } else {  // row-parallel: the partial products summed over the group, the bias once
      m.gemm(at(tmp), at(in), m.at(w, l), m.tp_->rank() == 0 ? vec(l, b) : nullptr, N);
      m.tp_->all_reduce_sum(at(tmp), int64_t(N) * C);
    }
    cpu::add_inplace(at(x), at(tmp), static_cast<size_t>(N) * C);
  }
  void attention(PassBuffer out, PassBuffer qkv_buf, int l) {
    const int32_t bs = cache.kv_block_size();
    const float* qkv = at(qkv_buf);
    for (int i = 0; i < N; ++i) {  // K and V of the new tokens into their slots
      const int32_t pos = sc.pos[static_cast<size_t>(i)];
      const int32_t* table = sc.tables[static_cast<size_t>(batch.token_to_seq[static_cast<size_t>(i)])];
      cpu::from_f32(cache.slot(l, table[pos / bs], pos % bs), qkv + int64_t(i) * 3 * Cl + Cl, cache.dtype(),
                    2 * static_cast<size_t>(Cl));
    }
    cpu::paged_attention_forward(at(out), qkv, N, batch.token_to_seq.data(), sc.pos.data(), sc.tables.data(),
                                 cache.slot(l, 0, 0), cache.dtype(), bs, Cl, NHl, scores, max_pos);
  }
  int experts(int l) const { return m.config().moe.experts_of(l); }
  // Note [MoE serving]
  // A token's output must not depend on the other requests of its batch, so serving routes without dropping:
  // every token goes to its top-k experts (moe_gating.h, dropless, no noise), which is the training model's eval
  // forward whenever that forward drops nothing. The batch's rows are grouped by expert (one gather), each expert
  // runs its two GEMMs over its rows (the grouped GEMM), and the weighted rows are summed back per token.
  void moe_residual(PassBuffer x, PassBuffer in, int l) {
    using R = nn::Gpt2Role;
    const nn::Gpt2MoeConfig& moe = m.config().moe;
    nn::GateOptions gate = moe.options.gate;
    gate.num_experts = experts(l);
    gate.drop_tokens = false;
    const int E = gate.num_experts, k = gate.k;
    auto grow = [](auto& v, int64_t n) {
      if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
      return v.data();
    };
    float* logits = grow(sc.moe_logits, int64_t(N) * E);
    m.gemm(logits, at(in), m.at_moe(R::moe_gate_w, l), nullptr, N);
    const nn::Routing r = nn::route_tokens(logits, N, gate, false, 0);
    const nn::ExpertGroups groups = nn::group_by_expert(r);
    const std::vector<int64_t>& offset = groups.offset;
    const int64_t rows = offset.back();
    float* grouped = grow(sc.moe_rows, 2 * rows * C);  // the experts' inputs, then their outputs
    float* outputs = grouped + rows * C;
    cpu::gather_rows(grouped, at(in), groups.token.data(), rows, C);
    float* hidden = grow(sc.moe_hidden, *std::max_element(r.rows.begin(), r.rows.end()) * 4 * int64_t(C));
    for (int e = 0; e < E; ++e) {
      const int R_e = static_cast<int>(r.rows[size_t(e)]);
      if (R_e == 0) continue;
      m.gemm(hidden, grouped + offset[size_t(e)] * C, m.at_moe(R::expert_fc_w, l, e),
             m.at_moe(R::expert_fc_b, l, e).values.data<float>(), R_e);
      cpu::gelu_forward(hidden, hidden, static_cast<size_t>(R_e) * 4 * C);
      m.gemm(outputs + offset[size_t(e)] * C, hidden, m.at_moe(R::expert_fc2_w, l, e),
             m.at_moe(R::expert_fc2_b, l, e).values.data<float>(), R_e);
    }
    float* out = grow(sc.moe_out, int64_t(N) * C);
    cpu::combine_rows(out, outputs, groups.row.data(), r.weight.data(), N, k, C);
    if (moe.options.use_residual) {  // out = moe * p0 + mlp * p1, p = softmax(coefficient(in))
      float* mlp_hidden = grow(sc.moe_hidden, int64_t(N) * 4 * C);
      float* mlp = outputs;  // free again: [N, C] fits in the grouped rows' space (rows >= N)
      m.gemm(mlp_hidden, at(in), m.at(R::fc_w, l), vec(l, R::fc_b), N);
      cpu::gelu_forward(mlp_hidden, mlp_hidden, static_cast<size_t>(N) * 4 * C);
      m.gemm(mlp, mlp_hidden, m.at(R::fc2_w, l), vec(l, R::fc2_b), N);
      float* coefs = logits;  // [N, 2] fits where the [N, E] logits were (E >= 2)
      m.gemm(coefs, at(in), m.at_moe(R::moe_coef_w, l), m.at_moe(R::moe_coef_b, l).values.data<float>(), N);
      for (int i = 0; i < N; ++i) {
        const float* coef = coefs + 2 * i;
        const float mx = std::max(coef[0], coef[1]), e0 = std::exp(coef[0] - mx), e1 = std::exp(coef[1] - mx);
        const float p0 = e0 / (e0 + e1), p1 = e1 / (e0 + e1);
        float* o = out + int64_t(i) * C;
        const float* d = mlp + int64_t(i) * C;
        for (int c = 0; c < C; ++c) o[c] = o[c] * p0 + d[c] * p1;
      }
    }
    cpu::add_inplace(at(x), out, static_cast<size_t>(N) * C);
  }
  void final_norm(PassBuffer out, PassBuffer x) {
    sc.last.resize(std::max(sc.last.size(), static_cast<size_t>(R) * C));
    int row = 0;
    for (int s = 0; s < S; ++s) {
      const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
      const int first = batch.wants_all_logits(s) ? 0 : q.n_tokens - 1;
      const int rows = q.n_tokens - first;
      std::memcpy(sc.last.data() + int64_t(row) * C, at(x) + int64_t(q.start + first) * C,
                  sizeof(float) * C * static_cast<size_t>(rows));
      row += rows;
    }
    cpu::layernorm_forward(at(out), mean, rstd, sc.last.data(), vec(-1, nn::Gpt2Role::lnf_w),
                           vec(-1, nn::Gpt2Role::lnf_b), R, C);
  }
  void head(PassBuffer in) { m.gemm(logits, at(in), m.at(nn::Gpt2Role::wte, -1), nullptr, R); }
};

void InferenceModel::forward(const RaggedBatch& batch, KvCache& cache, Scratch& scratch, float* logits) const {
  DS_CHECK_AS(DeviceError, device_.is_cpu(), "[serve] this model was placed on {}; its forward runs in an engine "
              "on that device (EngineConfig::device), not on the CPU", device_.str());
  CpuSteps steps{*this, batch, cache, scratch, logits};
  steps.prepare();
  gpt2_ragged_forward(steps, config_.n_layer);
}

}  // namespace ds::inference
