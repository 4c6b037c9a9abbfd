// GPT-2 model assembly, initialisation, and the training/eval/logits passes.
#include "ds/nn/models/gpt2.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <sstream>

#include "ds/core/rng.h"
#include "ds/core/strings.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds {

// ---- config ----
Gpt2Config Gpt2Config::preset(const std::string& name) {
  Gpt2Config c;
  c.name = name;
  if (name == "gpt2-tiny") {
    c.n_layer = 4, c.n_head = 4, c.n_embd = 128, c.block_size = 256;
  } else if (name == "gpt2-mini") {
    c.n_layer = 6, c.n_head = 6, c.n_embd = 384, c.block_size = 512;
  } else if (name == "gpt2") {
    c.n_layer = 12, c.n_head = 12, c.n_embd = 768, c.block_size = 1024;
  } else {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    DS_THROW(ConfigError, "[model] unknown model preset '{}'; choose one of {} or give a model JSON file", name,
             names);
  }
  return c;
}

std::vector<std::string> Gpt2Config::preset_names() { return {"gpt2-tiny", "gpt2-mini", "gpt2"}; }

Gpt2Config Gpt2Config::from_spec(const std::string& spec) {
  const bool is_file = spec.size() > 5 && spec.substr(spec.size() - 5) == ".json";
  if (!is_file) return preset(spec);
  std::ifstream in(spec);
  DS_CHECK_AS(IoError, in.good(), "[model] cannot open model config '{}'; give an existing JSON file or a preset",
              spec);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str(), nullptr, true, true);
  } catch (const nlohmann::json::parse_error& e) {
    DS_THROW(ConfigError, "[model] '{}' is not valid JSON: {}", spec, e.what());
  }
  return from_json(j, spec);
}

Gpt2Config Gpt2Config::from_json(const nlohmann::json& j, const std::string& spec) {
  DS_CHECK_AS(ConfigError, j.is_object(), "[model] '{}' must hold a JSON object", spec);
  Gpt2Config c;
  c.name = spec;
  if (j.contains("preset")) {
    DS_CHECK_AS(ConfigError, j["preset"].is_string(), "[model] '{}': 'preset' must be a string", spec);
    c = preset(j["preset"].get<std::string>());
    c.name = spec;
  }
  static const std::vector<std::string> kKeys = {"preset",     "n_layer",    "n_head",    "n_embd",
                                                  "vocab_size", "block_size", "model_type"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(kKeys.begin(), kKeys.end(), it.key()) != kKeys.end()) continue;
    const std::vector<std::string> guess = closest_names(it.key(), kKeys, 1, typo_distance_limit(it.key()));
    std::string known;
    for (const std::string& k : kKeys) known += (known.empty() ? "" : ", ") + k;
    DS_THROW(ConfigError, "[model] unknown key '{}' in '{}'; the known keys are {}. {}", it.key(), spec, known,
             guess.empty() ? std::string("Remove the key or fix its spelling.")
                           : fmt::format("Did you mean '{}'?", guess[0]));
  }
  auto get_int = [&](const char* key, int& dst) {
    if (!j.contains(key)) return;
    DS_CHECK_AS(ConfigError, j[key].is_number_integer(), "[model] '{}': '{}' must be an integer, found {}", spec, key,
                j[key].dump());
    dst = j[key].get<int>();
  };
  get_int("n_layer", c.n_layer);
  get_int("n_head", c.n_head);
  get_int("n_embd", c.n_embd);
  get_int("vocab_size", c.vocab_size);
  get_int("block_size", c.block_size);
  c.validate();
  return c;
}

nlohmann::json Gpt2Config::to_json() const {
  return {{"n_layer", n_layer}, {"n_head", n_head}, {"n_embd", n_embd}, {"vocab_size", vocab_size},
          {"block_size", block_size}};
}

void Gpt2Config::validate() const {
  DS_CHECK_AS(ConfigError, n_layer > 0 && n_head > 0 && n_embd > 0 && vocab_size > 0 && block_size > 0,
              "[model] n_layer, n_head, n_embd, vocab_size and block_size must all be positive (found {}, {}, {}, "
              "{}, {})",
              n_layer, n_head, n_embd, vocab_size, block_size);
  DS_CHECK_AS(ConfigError, n_embd % n_head == 0, "[model] n_embd ({}) must be divisible by n_head ({})", n_embd,
              n_head);
}

int64_t Gpt2Config::num_params() const {
  const int64_t C = n_embd;
  const int64_t per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C);
  return int64_t(vocab_size) * C + int64_t(block_size) * C + n_layer * per_block + 2 * C;
}

std::string Gpt2Config::str() const {
  return fmt::format("{} (n_layer {}, n_head {}, n_embd {}, vocab {}, block {}; {:.2f}M parameters)", name, n_layer,
                     n_head, n_embd, vocab_size, block_size, num_params() / 1e6);
}

// ---- model ----
Gpt2::Gpt2(const Gpt2Config& config, int64_t unit_alignment, bool with_grads, bool with_params, DType param_dtype,
           DType grad_dtype)
    : Module("transformer"), config_(config) {
  config_.validate();
  const int C = config_.n_embd;
  // wte is gathered by the head a slice at a time: slices of about a transformer block's size (12 C^2).
  const int64_t rows = ParameterStore::slice_rows(config_.vocab_size, C, int64_t(12) * C * C, unit_alignment);
  wte_ = store_.add_sliced("transformer.wte.weight", {config_.vocab_size, C}, rows);
  for (size_t u = 0; u < store_.units().size(); ++u) {
    const ParamUnit& unit = store_.units()[u];
    wte_slices_.push_back(std::make_unique<RowSlice>(unit.name, unit.row_begin, unit.row_end));
    store_.set_unit_owner(u, wte_slices_.back().get());
  }
  store_.begin_unit("transformer.wpe", this);
  wpe_ = store_.add("transformer.wpe.weight", {config_.block_size, C});
  for (int i = 0; i < config_.n_layer; ++i) {
    const std::string name = fmt::format("transformer.h.{}", i);
    const size_t unit = store_.begin_unit(name);
    blocks_.push_back(std::make_unique<TransformerBlock>(store_, name, C, config_.n_head));
    store_.set_unit_owner(unit, blocks_.back().get());
  }
  const size_t unit = store_.begin_unit("transformer.ln_f");
  ln_f_ = std::make_unique<LayerNorm>(store_, "transformer.ln_f", C);
  store_.set_unit_owner(unit, ln_f_.get());
  store_.materialize(unit_alignment, with_grads, with_params, param_dtype, grad_dtype);
}

void Gpt2::collect_parameters(std::vector<Parameter*>& out) const {
  out.push_back(wte_);
  out.push_back(wpe_);
  for (const auto& b : blocks_) b->collect_parameters(out);
  ln_f_->collect_parameters(out);
}

void Gpt2::init_weights(uint64_t seed) {
  Tensor& flat = store_.flat_params();
  DS_ASSERT(flat.defined(), "init_weights(seed) needs resident parameters; pass a sink");
  init_weights(seed, [&](int64_t offset, const float* values, int64_t n) {
    std::copy(values, values + n, flat.data<float>() + offset);
  });
}

void Gpt2::init_weights(uint64_t seed, const ParamSink& sink) {
  Rng rng(seed);
  const float proj_std = 0.02f / std::sqrt(2.0f * config_.n_layer);
  std::vector<float> piece(size_t{1} << 16);
  for (const Parameter& p : store_.all()) {
    const bool is_ln = p.name.find(".ln_") != std::string::npos;
    const bool is_bias = p.name.size() > 5 && p.name.substr(p.name.size() - 5) == ".bias";
    const bool is_proj = p.name.find(".c_proj.weight") != std::string::npos;
    const float stdv = is_proj ? proj_std : 0.02f;
    for (int64_t first = 0; first < p.numel();) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(piece.size()), p.numel() - first);
      for (int64_t i = 0; i < n; ++i) piece[i] = is_ln && !is_bias ? 1.0f : is_bias ? 0.0f : stdv * rng.normal();
      sink(p.offset + first, piece.data(), n);
      first += n;
    }
  }
}

void Gpt2::check_tokens(const int32_t* tokens, int B, int T, bool are_targets) const {
  DS_CHECK_AS(ShapeError, B > 0 && T > 0, "[model] batch {} x sequence {} is empty; both must be positive", B, T);
  DS_CHECK_AS(ShapeError, T <= config_.block_size,
              "[model] sequence length {} exceeds the model's block_size {}; use a shorter sequence or a model "
              "with a larger block_size",
              T, config_.block_size);
  DS_CHECK_AS(ShapeError, int64_t(B) * T <= INT32_MAX / std::max(config_.n_embd * 4, 1),
              "[model] a micro-batch of {} x {} tokens is too large for one pass; use a smaller micro-batch", B, T);
  const int64_t n = int64_t(B) * T;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    const bool ok = (t >= 0 && t < config_.vocab_size) || (are_targets && t == -1);
    DS_CHECK_AS(ShapeError, ok,
                "[model] {} id {} at position {} is outside the vocabulary [0, {}); the data was probably made "
                "with another tokenizer: prepare it again with this model's tokenizer, or raise vocab_size",
                are_targets ? "target" : "input", t, i, config_.vocab_size);
  }
}

// Note [Gather units]
// Parameters are grouped into units that ZeRO gathers, releases and reduces as one: the slices of wte (RowSlice
// owners), the position embedding (owned by the model itself), each transformer block, and ln_f. Hooks come in
// pairs. Where wte's data and gradient are resident (no ZeRO, stages 0-1), the head and the embedding use wte
// whole: the wte slices' pre_backward comes before the head and their post_backward after the embedding's
// backward, where their gradient is complete. Where they are not (Note [Sliced head]), the head visits the slices
// itself, and the embedding reaches wte's rows through ModuleHooks::lookup_rows and accumulate_row_grads.
Tensor Gpt2::forward_hidden(Ctx& ctx, const int32_t* inputs, int B, int T) {
  check_tokens(inputs, B, T, false);
  const int C = config_.n_embd;
  const int64_t N = int64_t(B) * T;
  Tensor x = ctx.act().alloc({N, C});
  if (wte_->data.defined()) {
    if (hooks_) hooks_->pre_forward(*this);
    cpu::encoder_forward(x.data<float>(), inputs, wte_->data.data<float>(), wpe_->data.data<float>(), B, T, C);
    if (hooks_) hooks_->post_forward(*this);
  } else {
    DS_ASSERT(hooks_, "wte is not resident but no hooks are set");
    const size_t mark = ctx.scratch().mark();
    Tensor rows = ctx.scratch().alloc({N, C});
    hooks_->lookup_rows(*wte_, inputs, N, rows.data<float>());
    hooks_->pre_forward(*this);
    cpu::encoder_forward_rows(x.data<float>(), rows.data<float>(), wpe_->data.data<float>(), B, T, C);
    hooks_->post_forward(*this);
    ctx.scratch().release(mark);
  }
  if (ctx.training) {
    Tensor saved = ctx.act().alloc({N}, DType::i32);
    std::copy(inputs, inputs + N, saved.data<int32_t>());
    ctx.saved(this) = {saved};
  }
  for (auto& block : blocks_) {
    if (hooks_) hooks_->pre_forward(*block);
    x = block->forward(ctx, x, B, T);
    if (hooks_) hooks_->post_forward(*block);
  }
  if (hooks_) hooks_->pre_forward(*ln_f_);
  Tensor h = ln_f_->forward(ctx, x);
  if (hooks_) hooks_->post_forward(*ln_f_);
  return h;
}

double Gpt2::classifier(Ctx& ctx, const Tensor& h, const int32_t* targets, Tensor* dh, float grad_scale) {
  if (!wte_->data.defined() || (dh && !wte_->grad.defined())) return classifier_sliced(ctx, h, targets, dh, grad_scale);
  const int C = config_.n_embd, V = config_.vocab_size;
  const int N = static_cast<int>(h.numel() / C);
  const size_t mark = ctx.scratch().mark();
  Tensor scratch = ctx.scratch().alloc({static_cast<int64_t>(cpu::classifier_scratch_floats(N, V))});
  const double loss_sum = cpu::classifier_forward_backward(
      dh ? dh->data<float>() : nullptr, dh ? wte_->grad.data<float>() : nullptr, nullptr, h.data<float>(),
      wte_->data.data<float>(), targets, grad_scale, scratch.data<float>(), N, C, V);
  ctx.scratch().release(mark);
  return loss_sum;
}

const float* Gpt2::slice_data(const RowSlice& s) const {
  if (wte_->data.defined()) return wte_->data.data<float>() + s.row_begin * config_.n_embd;
  return hooks_->slice_data(s);
}

// Note [Sliced head]
// Under ZeRO-3 wte is never whole on a rank, and under ZeRO-2 its gradient is not: the head then works a slice
// of rows at a time. Forward: each slice is gathered (pre_forward), fills its columns of the logits, and is
// released. The softmax and loss then turn the logits of all N rows into dlogits in place. Backward visits the
// slices in reverse: each is gathered again with a gradient bucket (pre_backward), adds its share to dh and
// writes its own gradient, which post_backward reduce-scatters at once. So wte is gathered twice per step, like
// every other unit (3Ψ traffic), and no full wte or wte gradient ever exists; the price is the [N, V] logits,
// kept for the whole head instead of in chunks of 512 rows. The embedding's share of wte's gradient, which
// arrives only at the end of backward, goes through accumulate_row_grads: a few rows, not another full reduce.
double Gpt2::classifier_sliced(Ctx& ctx, const Tensor& h, const int32_t* targets, Tensor* dh, float grad_scale) {
  DS_ASSERT(hooks_, "the sliced head needs ZeRO hooks");
  const int C = config_.n_embd, V = config_.vocab_size;
  const int N = static_cast<int>(h.numel() / C);
  const size_t mark = ctx.scratch().mark();
  Tensor logits = ctx.scratch().alloc({int64_t(N), int64_t(V)});
  for (const auto& s : wte_slices_) {
    hooks_->pre_forward(*s);
    cpu::logits_rows_forward(logits.data<float>(), h.data<float>(), slice_data(*s), N, C, V,
                             static_cast<int>(s->row_begin), static_cast<int>(s->row_end - s->row_begin));
    hooks_->post_forward(*s);
  }
  const double loss_sum = cpu::softmax_xent_rows(logits.data<float>(), nullptr, targets, dh != nullptr, grad_scale,
                                                 N, V);
  if (dh) {
    dh->zero_();
    for (auto it = wte_slices_.rbegin(); it != wte_slices_.rend(); ++it) {
      const RowSlice& s = **it;
      hooks_->pre_backward(**it);
      cpu::classifier_rows_backward(dh->data<float>(), hooks_->slice_grads(s), logits.data<float>(), h.data<float>(),
                                    slice_data(s), N, C, V, static_cast<int>(s.row_begin),
                                    static_cast<int>(s.row_end - s.row_begin));
      hooks_->post_backward(**it);
    }
  }
  ctx.scratch().release(mark);
  return loss_sum;
}

namespace {
int64_t count_targets(const int32_t* targets, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += targets[i] >= 0;
  DS_CHECK_AS(ShapeError, count > 0,
              "[model] every target in the batch is -1 (ignored), so there is nothing to learn from; check the data");
  return count;
}
}  // namespace

float Gpt2::forward_backward(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T,
                             float grad_scale) {
  ctx.training = true;
  check_tokens(targets, B, T, true);
  const int C = config_.n_embd;
  const int64_t N = int64_t(B) * T;
  const int64_t count = count_targets(targets, N);
  Tensor h = forward_hidden(ctx, inputs, B, T);

  // Backward buffers: dh from the head, then two [N, C] buffers the blocks alternate between.
  Tensor dh = ctx.scratch().alloc({N, C});
  Tensor ping = ctx.scratch().alloc({N, C});
  Tensor pong = ctx.scratch().alloc({N, C});
  const bool whole_wte = wte_->data.defined() && wte_->grad.defined();  // Note [Gather units]
  if (hooks_ && whole_wte)
    for (auto& s : wte_slices_) hooks_->pre_backward(*s);
  const double loss_sum = classifier(ctx, h, targets, &dh, grad_scale / static_cast<float>(count));
  if (hooks_) hooks_->pre_backward(*ln_f_);
  const size_t mark = ctx.scratch().mark();
  ping.copy_from(ln_f_->backward(ctx, dh));
  ctx.scratch().release(mark);
  if (hooks_) hooks_->post_backward(*ln_f_);
  Tensor dy = ping, dx = pong;
  for (int i = static_cast<int>(blocks_.size()) - 1; i >= 0; --i) {
    if (hooks_) hooks_->pre_backward(*blocks_[i]);
    blocks_[i]->backward(ctx, dy, B, T, dx);
    if (hooks_) hooks_->post_backward(*blocks_[i]);
    std::swap(dy, dx);
  }
  const int32_t* ids = ctx.saved(this).at(0).data<int32_t>();
  if (hooks_) hooks_->pre_backward(*this);
  cpu::encoder_backward(whole_wte ? wte_->grad.data<float>() : nullptr, wpe_->grad.data<float>(), dy.data<float>(),
                        ids, B, T, C);
  if (!whole_wte) {
    DS_ASSERT(hooks_, "wte's gradient is not resident but no hooks are set");
    hooks_->accumulate_row_grads(*wte_, ids, dy.data<float>(), N);
  }
  if (hooks_) hooks_->post_backward(*this);
  if (hooks_ && whole_wte)
    for (auto& s : wte_slices_) hooks_->post_backward(*s);
  return static_cast<float>(loss_sum / static_cast<double>(count));
}

float Gpt2::forward_loss(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T) {
  ctx.training = false;
  check_tokens(targets, B, T, true);
  const int64_t count = count_targets(targets, int64_t(B) * T);
  Tensor h = forward_hidden(ctx, inputs, B, T);
  const double loss_sum = classifier(ctx, h, targets, nullptr, 1.0f);
  return static_cast<float>(loss_sum / static_cast<double>(count));
}

void Gpt2::forward_logits(Ctx& ctx, const int32_t* inputs, int B, int T, float* logits) {
  ctx.training = false;
  Tensor h = forward_hidden(ctx, inputs, B, T);
  const int C = config_.n_embd, V = config_.vocab_size;
  if (wte_->data.defined()) {
    cpu::logits_forward(logits, h.data<float>(), wte_->data.data<float>(), B * T, C, V);
    return;
  }
  for (const auto& s : wte_slices_) {
    hooks_->pre_forward(*s);
    cpu::logits_rows_forward(logits, h.data<float>(), slice_data(*s), B * T, C, V, static_cast<int>(s->row_begin),
                             static_cast<int>(s->row_end - s->row_begin));
    hooks_->post_forward(*s);
  }
}

}  // namespace ds
