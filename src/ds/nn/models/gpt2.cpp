// GPT-2 model assembly, initialisation, and the training/eval/logits passes.
#include "ds/nn/models/gpt2.h"

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <sstream>

#include "ds/core/json_input.h"
#include "ds/core/rng.h"
#include "ds/core/strings.h"
#include "ds/ops/ops.h"

namespace ds::nn {

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
  } else if (name == "gpt2-moe" || name == "gpt2-mixtral") {
    c.n_layer = 6, c.n_head = 6, c.n_embd = 384, c.block_size = 512;
    c.moe.num_experts = {8};
    if (name == "gpt2-moe") {  // DeepSpeed-MoE's recipe at gpt2-mini's size: top-1 in every other block
      c.moe.layer_interval = 2;
    } else {  // Mixtral's routing: top-2 of 8 in every block, no token dropped
      c.moe.options.gate.k = 2;
      c.moe.options.gate.drop_tokens = false;
    }
  } else if (name == "gpt2-medium") {  // Hugging Face's GPT-2 sizes: 355M, 774M, 1.56B
    c.n_layer = 24, c.n_head = 16, c.n_embd = 1024, c.block_size = 1024;
  } else if (name == "gpt2-large") {
    c.n_layer = 36, c.n_head = 20, c.n_embd = 1280, c.block_size = 1024;
  } else if (name == "gpt2-xl") {
    c.n_layer = 48, c.n_head = 25, c.n_embd = 1600, c.block_size = 1024;
  } else {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    DS_THROW(ConfigError, "[model] unknown model preset '{}'; choose one of {} or give a model JSON file", name,
             names);
  }
  return c;
}

std::vector<std::string> Gpt2Config::preset_names() {
  return {"gpt2-tiny", "gpt2-mini", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2-moe", "gpt2-mixtral"};
}

Gpt2Config Gpt2Config::from_spec(const std::string& spec) {
  const bool is_file = spec.size() > 5 && spec.substr(spec.size() - 5) == ".json";
  if (!is_file) return preset(spec);
  std::ifstream in(spec);
  DS_CHECK_AS(IoError, in.good(), "[model] cannot open model config '{}'; give an existing JSON file or a preset",
              spec);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  JsonLimits limits;
  limits.comments = true;
  const std::string problem = parse_json_bounded(ss.str(), limits, j);
  DS_CHECK_AS(ConfigError, problem.empty(), "[model] '{}' is not a valid model JSON file: {}; fix it or give a "
              "preset (gpt2-tiny, gpt2-mini, gpt2, gpt2-medium, gpt2-large, gpt2-xl)", spec, problem);
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
  static const std::vector<std::string> kKeys = {"preset",     "n_layer",    "n_head",     "n_embd",
                                                  "vocab_size", "block_size", "model_type", "moe"};
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
    const std::optional<int> v = json_integer<int>(j[key]);
    DS_CHECK_AS(ConfigError, v.has_value(), "[model] '{}': '{}' must be an integer (of at most 31 bits), found {}",
                spec, key, json_excerpt(j[key]));
    dst = *v;
  };
  get_int("n_layer", c.n_layer);
  get_int("n_head", c.n_head);
  get_int("n_embd", c.n_embd);
  get_int("vocab_size", c.vocab_size);
  get_int("block_size", c.block_size);
  if (j.contains("moe")) c.moe.apply_json(j["moe"], spec);
  c.validate();
  return c;
}

nlohmann::json Gpt2Config::to_json() const {
  nlohmann::json j = {{"n_layer", n_layer}, {"n_head", n_head}, {"n_embd", n_embd}, {"vocab_size", vocab_size},
                      {"block_size", block_size}};
  if (moe.enabled()) j["moe"] = moe.to_json();
  return j;
}

void Gpt2Config::validate() const {
  DS_CHECK_AS(ConfigError, n_layer > 0 && n_head > 0 && n_embd > 0 && vocab_size > 0 && block_size > 0,
              "[model] n_layer, n_head, n_embd, vocab_size and block_size must all be positive (found {}, {}, {}, "
              "{}, {})",
              n_layer, n_head, n_embd, vocab_size, block_size);
  DS_CHECK_AS(ConfigError, n_embd % n_head == 0, "[model] n_embd ({}) must be divisible by n_head ({})", n_embd,
              n_head);
  moe.validate(n_layer);
}

std::vector<Gpt2Weight> Gpt2Config::weight_spec() const {
  return gpt2_weight_spec(n_layer, n_embd, vocab_size, block_size, experts_per_block(), moe.options.use_residual);
}

int64_t Gpt2Config::num_params() const {
  int64_t n = 0;
  for (const Gpt2Weight& w : weight_spec()) n += w.numel();
  return n;
}

std::vector<Gpt2Config::Layer> Gpt2Config::layers() const {
  const int64_t C = n_embd, wte = int64_t(vocab_size) * C;
  std::vector<Layer> out{{"Gpt2Embedding", wte + int64_t(block_size) * C}};
  for (int i = 0; i < n_layer; ++i) out.push_back({"TransformerBlock", 0});
  for (const Gpt2Weight& w : weight_spec())
    if (w.layer >= 0) out[static_cast<size_t>(w.layer) + 1].params += w.numel();
  out.push_back({"Gpt2FinalNorm", 2 * C});
  out.push_back({"Gpt2Head", wte});
  return out;
}

std::string Gpt2Config::str() const {
  if (moe.enabled())
    return fmt::format("{} (n_layer {}, n_head {}, n_embd {}, vocab {}, block {}; {}; {:.2f}M parameters, {:.2f}M "
                       "active per token)", name, n_layer, n_head, n_embd, vocab_size, block_size, moe.str(),
                       num_params() / 1e6, active_params() / 1e6);
  return fmt::format("{} (n_layer {}, n_head {}, n_embd {}, vocab {}, block {}; {:.2f}M parameters)", name, n_layer,
                     n_head, n_embd, vocab_size, block_size, num_params() / 1e6);
}

// ---- blocks ----
namespace {
// The pass's target ids as a tensor (borrowed: the caller's buffer outlives the pass).
Tensor targets_of(const Pass& pass) {
  return Tensor::borrow(const_cast<int32_t*>(pass.targets), {pass.rows_count()}, DType::i32);
}
}  // namespace

Gpt2Embedding::Gpt2Embedding(ParameterStore& store, const Gpt2Config& config, Parameter* wte,
                             TensorParallelGroup* tp)
    : Block("transformer.wpe"), C_(config.n_embd), wte_(wte), tp_(tp) {
  store.begin_unit("transformer.wpe", this);
  wpe_ = store.add("transformer.wpe.weight", {config.block_size, C_});
}

void Gpt2Embedding::collect_parameters(std::vector<Parameter*>& out) const {
  out.push_back(wte_);
  out.push_back(wpe_);
}

Tensor Gpt2Embedding::forward(Ctx& ctx, const Tensor&, Pass& pass) {
  const int B = pass.B, T = pass.T;
  const int64_t N = pass.rows_count();
  Tensor x = ctx.act().alloc({N, C_});
  Tensor ids = ctx.act().alloc({N}, DType::i32);  // a copy: backward needs the ids after the caller's buffer moved on
  std::copy(pass.inputs, pass.inputs + N, ids.data<int32_t>());
  if (tp_) {
    forward_parallel(ctx, x, ids, pass);
  } else if (wte_->data.defined()) {
    ops::embedding_forward(x, ids, wte_->data, wpe_->data, B, T);
  } else {
    const size_t mark = ctx.scratch().mark();
    Tensor rows = ctx.scratch().alloc({N, C_});
    pass.rows->lookup_rows(*wte_, ids.data<int32_t>(), N, rows.data<float>());
    ops::embedding_forward_rows(x, rows, wpe_->data, B, T);
    ctx.scratch().release(mark);
  }
  if (ctx.training) ctx.saved(this) = {ids};
  return x;
}

Tensor Gpt2Embedding::backward(Ctx& ctx, const Tensor& dy, Pass& pass, Tensor) {
  const Tensor& ids = ctx.saved(this).at(0);
  if (tp_) {
    backward_parallel(ctx, dy, ids, pass);
    return Tensor();
  }
  const bool whole_wte = wte_->data.defined() && wte_->grad.defined();  // Note [Gather units]
  ops::embedding_backward(whole_wte ? wte_->grad : Tensor(), wpe_->grad, dy, ids, pass.B, pass.T);
  if (!whole_wte)
    pass.rows->accumulate_row_grads(*wte_, ids.data<int32_t>(), dy.data<float>(), pass.rows_count());
  return Tensor();
}

namespace {
// Ids as rows of this rank's vocabulary piece [begin, begin + rows): the row, or 0 with `outside` set. Every id
// maps to a row, so a row collective (ZeRO's lookup_rows) sees the same count on every data-parallel rank.
std::vector<int32_t> local_rows(const Tensor& ids, int64_t begin, int64_t rows, std::vector<uint8_t>& outside) {
  const int64_t n = ids.numel();
  std::vector<int32_t> local(static_cast<size_t>(n));
  outside.assign(static_cast<size_t>(n), 0);
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = id[i] - begin;
    outside[i] = r < 0 || r >= rows;
    local[i] = outside[i] ? 0 : static_cast<int32_t>(r);
  }
  return local;
}

void zero_rows(const Tensor& t, const std::vector<uint8_t>& which) {
  const int64_t C = t.size(1);
  float* d = t.data<float>();
  for (size_t i = 0; i < which.size(); ++i)
    if (which[i]) std::fill(d + i * C, d + (i + 1) * C, 0.0f);
}

int64_t vocab_begin(const Parameter& wte) { return TpSplit::piece(wte.tp.full[0], wte.tp.rank, wte.tp.size).first; }
}  // namespace

void Gpt2Embedding::forward_parallel(Ctx& ctx, const Tensor& x, const Tensor& ids, Pass& pass) {
  const int64_t N = pass.rows_count(), begin = vocab_begin(*wte_);
  const size_t mark = ctx.scratch().mark();
  Tensor rows = ctx.scratch().alloc({N, C_});
  if (wte_->data.defined()) {
    ops::vocab_rows_forward(rows, wte_->data, ids, begin);
  } else {
    std::vector<uint8_t> outside;
    const std::vector<int32_t> local = local_rows(ids, begin, wte_->shape[0], outside);
    pass.rows->lookup_rows(*wte_, local.data(), N, rows.data<float>());
    zero_rows(rows, outside);
  }
  tp_->all_reduce_sum(rows);
  ops::embedding_forward_rows(x, rows, wpe_->data, pass.B, pass.T);
  ctx.scratch().release(mark);
}

void Gpt2Embedding::backward_parallel(Ctx& ctx, const Tensor& dy, const Tensor& ids, Pass& pass) {
  const int64_t N = pass.rows_count(), begin = vocab_begin(*wte_);
  ops::embedding_backward(Tensor(), wpe_->grad, dy, ids, pass.B, pass.T);
  if (wte_->data.defined() && wte_->grad.defined()) {
    ops::vocab_rows_backward(wte_->grad, dy, ids, begin);
    return;
  }
  const size_t mark = ctx.scratch().mark();
  std::vector<uint8_t> outside;
  const std::vector<int32_t> local = local_rows(ids, begin, wte_->shape[0], outside);
  Tensor masked = ctx.scratch().alloc({N, C_});
  masked.copy_from(dy);
  zero_rows(masked, outside);
  pass.rows->accumulate_row_grads(*wte_, local.data(), masked.data<float>(), N);
  ctx.scratch().release(mark);
}

Tensor Gpt2FinalNorm::backward(Ctx& ctx, const Tensor& dy, Pass&, Tensor dx) {
  const size_t mark = ctx.scratch().mark();
  dx.copy_from(ln_.backward(ctx, dy));
  ctx.scratch().release(mark);
  return dx;
}

Tensor Gpt2Head::forward(Ctx& ctx, const Tensor& h, Pass& pass) {
  const int64_t N = pass.rows_count();
  if (pass.logits) {
    DS_CHECK_AS(ConfigError, !tp_, "[model] full logits of a tensor-parallel model are not gathered; compute them "
                "with the serving engine or at tensor-parallel size 1");
    const Tensor logits = Tensor::borrow(pass.logits, {N, V_}, DType::f32);
    if (wte_->data.defined()) {
      ops::logits(logits, h, wte_->data);
    } else {
      pass.rows->for_each_slice(*wte_, false, [&](int64_t begin, const Tensor& w, const Tensor&) {
        ops::logits_rows(logits, h, w, begin);
      });
    }
    return Tensor();
  }
  if (ctx.training) {
    Tensor dh = ctx.act().alloc({N, int64_t(C_)});
    pass.loss_sum = classifier(ctx, h, pass, &dh);
    ctx.saved(this) = {dh};
  } else {
    pass.loss_sum = classifier(ctx, h, pass, nullptr);
  }
  return Tensor();
}

Tensor Gpt2Head::backward(Ctx& ctx, const Tensor&, Pass&, Tensor) { return ctx.saved(this).at(0); }

double Gpt2Head::classifier(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh) {
  if (tp_) return classifier_parallel(ctx, h, pass, dh);
  if (!wte_->data.defined() || (dh && !wte_->grad.defined())) return classifier_sliced(ctx, h, pass, dh);
  const int64_t N = pass.rows_count();
  const size_t mark = ctx.scratch().mark();
  Tensor scratch = ctx.scratch().alloc({ops::classifier_scratch(static_cast<int>(N), V_)});
  const double loss_sum = ops::classifier(dh ? *dh : Tensor(), dh ? wte_->grad : Tensor(), h, wte_->data,
                                          targets_of(pass), dh ? pass.grad_scale : 1.0f, scratch);
  ctx.scratch().release(mark);
  return loss_sum;
}

// Note [Sliced head]
// Under ZeRO-3 wte is never whole on a rank, and under ZeRO-2 its gradient is not: the head then works a slice
// of rows at a time (RowAccess::for_each_slice). Forward: each slice is gathered, fills its columns of the logits,
// and is released. The softmax and loss then turn the logits of all N rows into dlogits in place. Backward visits
// the slices in reverse: each is gathered again with a gradient bucket, adds its share to dh and writes its own
// gradient, which is reduce-scattered at once. So wte is gathered twice per step, like every other unit (3Ψ
// traffic), and no full wte or wte gradient ever exists; the price is the [N, V] logits, kept for the whole head
// instead of in chunks of 512 rows. The embedding's share of wte's gradient, which arrives only at the end of
// backward, goes through accumulate_row_grads: a few rows, not another full reduce.
double Gpt2Head::classifier_sliced(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh) {
  const int64_t N = pass.rows_count();
  const size_t mark = ctx.scratch().mark();
  Tensor logits = ctx.scratch().alloc({N, int64_t(V_)});
  pass.rows->for_each_slice(*wte_, false, [&](int64_t begin, const Tensor& w, const Tensor&) {
    ops::logits_rows(logits, h, w, begin);
  });
  const double loss_sum = ops::softmax_xent(logits, targets_of(pass), dh != nullptr, dh ? pass.grad_scale : 1.0f);
  if (dh) {
    dh->zero_();
    pass.rows->for_each_slice(*wte_, true, [&](int64_t begin, const Tensor& w, const Tensor& grad) {
      ops::classifier_rows_backward(*dh, grad, logits, h, w, begin);
    });
  }
  ctx.scratch().release(mark);
  return loss_sum;
}

// Note [Vocabulary-parallel head]
// Under tensor parallelism each rank holds rows [begin, begin + Vl) of wte, so it computes only those columns of
// the logits, and the softmax's normalisers come from the group (Megatron's vocabulary-parallel cross-entropy):
// the row maxima are max-reduced, then the sums of exp(logit - max) and the targets' logits (0 on every rank but
// the one holding the target) are sum-reduced, 3N floats in all; the full [N, V] logits never exist. Each rank
// then has its columns of grad_scale * (softmax - onehot), adds its share dlogits · wte_r to dh, and the group sums
// dh (the backward of the head's replicated input, Megatron's "f"). wte's gradient stays with its rows. Where wte
// is not resident (ZeRO-2/3), the slices of this rank's rows are visited as in Note [Sliced head].
double Gpt2Head::classifier_parallel(Ctx& ctx, const Tensor& h, Pass& pass, Tensor* dh) {
  const int64_t N = pass.rows_count(), Vl = wte_->shape[0], begin = vocab_begin(*wte_);
  const bool whole = wte_->data.defined() && (!dh || wte_->grad.defined());
  const size_t mark = ctx.scratch().mark();
  Tensor logits = ctx.scratch().alloc({N, Vl});
  Tensor stats = ctx.scratch().alloc({3, N});
  if (whole) {
    ops::logits(logits, h, wte_->data);
  } else {
    pass.rows->for_each_slice(*wte_, false, [&](int64_t row, const Tensor& w, const Tensor&) {
      ops::logits_rows(logits, h, w, row);
    });
  }
  const Tensor targets = targets_of(pass);
  ops::vocab_xent_max(logits, stats);
  tp_->all_reduce_max(stats.data<float>(), N);
  ops::vocab_xent_sums(logits, stats, targets, begin);
  tp_->all_reduce_sum(stats.data<float>() + N, 2 * N);
  const double loss_sum = ops::vocab_xent_finish(logits, stats, targets, begin, dh != nullptr,
                                                 dh ? pass.grad_scale : 1.0f);
  if (dh) {
    dh->zero_();
    if (whole) {
      ops::classifier_rows_backward(*dh, wte_->grad, logits, h, wte_->data, 0);
    } else {
      pass.rows->for_each_slice(*wte_, true, [&](int64_t row, const Tensor& w, const Tensor& grad) {
        ops::classifier_rows_backward(*dh, grad, logits, h, w, row);
      });
    }
    tp_->all_reduce_sum(*dh);
  }
  ctx.scratch().release(mark);
  return loss_sum;
}

// ---- model ----
// Note [Gather units]
// Parameters are grouped into units that ZeRO gathers, releases and reduces as one: the slices of wte (RowSlice
// owners), the position embedding (owned by the embedding block), each transformer block, and ln_f. The head has
// no unit of its own: it uses wte, tied to the embedding (Note [Tied parameters] in module_runner.cpp).
Gpt2::Gpt2(const Gpt2Config& config, int64_t unit_alignment, bool with_grads, bool with_params, DType param_dtype,
           DType grad_dtype, TensorParallelGroup* tp, LayerRange range, ExpertPlacement experts)
    : Module("transformer"), config_(config), tp_(tp && tp->size() > 1 ? tp : nullptr), range_(range) {
  config_.validate();
  const int C = config_.n_embd, L = config_.n_layer;
  if (range_.last < 0) range_.last = L + 3;
  DS_ASSERT(range_.first >= 0 && range_.first < range_.last && range_.last <= L + 3, "layers [{}, {}) of {}",
            range_.first, range_.last, L + 3);
  auto holds = [&](int layer) { return layer >= range_.first && layer < range_.last; };
  if (tp_)
    DS_CHECK_AS(ConfigError, config_.n_head % tp_->size() == 0, "[model] tensor-parallel size {} does not divide "
                "n_head {}: each rank must hold whole attention heads; choose a size that divides {}", tp_->size(),
                config_.n_head, config_.n_head);
  DS_CHECK_AS(ConfigError, !tp_ || !config_.moe.enabled(), "[model] MoE models with tensor parallelism are not "
              "supported yet; train them with expert and data parallelism (tensor-parallel size 1)");
  const int ep_size = experts.group ? experts.group->size() : 1;
  DS_CHECK_AS(ConfigError, !config_.moe.enabled() || ep_size == config_.moe.ep_size, "[model] the model's "
              "moe.ep_size is {} but its experts are placed over {} rank(s)", config_.moe.ep_size, ep_size);
  if (holds(0) || holds(L + 2)) {
    // wte is gathered by the head a slice at a time: slices of about a transformer block's size (12 C^2). Under
    // tensor parallelism this rank holds a piece of the vocabulary's rows.
    TpSplit vocab;
    if (tp_) vocab = TpSplit{0, 1, tp_->rank(), tp_->size(), Shape{config_.vocab_size, C}};
    const Shape wte_shape = vocab.local_shape(Shape{config_.vocab_size, C});
    const int64_t rows = ParameterStore::slice_rows(wte_shape[0], C, int64_t(12) * C * C, unit_alignment);
    wte_ = store_.add_sliced("transformer.wte.weight", wte_shape, rows);
    wte_->tp = vocab;
    for (size_t u = 0; u < store_.units().size(); ++u) {
      wte_slices_.push_back(std::make_unique<RowSlice>(store_.units()[u].name));
      store_.set_unit_owner(u, wte_slices_.back().get());
    }
  }
  std::vector<Block*> chain;
  if (holds(0)) {
    embedding_ = std::make_unique<Gpt2Embedding>(store_, config_, wte_, tp_);
    chain.push_back(embedding_.get());
  }
  const LinearFactory linear = tp_ ? tensor_parallel_linear(*tp_) : dense_linear();
  int moe_index = 0;
  for (int i = 0; i < L; ++i) {
    if (!holds(i + 1)) continue;
    const std::string name = fmt::format("transformer.h.{}", i);
    const size_t unit = store_.begin_unit(name);
    MoeBlockArgs moe{&expert_store_, config_.moe.options, experts.group, moe_index};
    if (config_.moe.experts_of(i) > 0) {
      moe.options.gate.num_experts = config_.moe.experts_of(i);
      ++moe_index;
    }
    blocks_.push_back(std::make_unique<TransformerBlock>(store_, name, C, config_.n_head, linear,
                                                         config_.moe.experts_of(i) > 0 ? &moe : nullptr));
    store_.set_unit_owner(unit, blocks_.back().get());
    chain.push_back(blocks_.back().get());
  }
  if (holds(L + 1)) {
    const size_t unit = store_.begin_unit("transformer.ln_f");
    ln_f_ = std::make_unique<Gpt2FinalNorm>(store_, "transformer.ln_f", C);
    store_.set_unit_owner(unit, ln_f_.get());
    chain.push_back(ln_f_.get());
  }
  if (holds(L + 2)) {
    head_ = std::make_unique<Gpt2Head>(config_, wte_, tp_);
    chain.push_back(head_.get());
  }
  store_.materialize(unit_alignment, with_grads, with_params, param_dtype, grad_dtype);
  if (!expert_store_.all().empty())
    expert_store_.materialize(experts.unit_alignment, with_grads, with_params, param_dtype, grad_dtype);
  check_against_spec();
  runner_ = std::make_unique<ModuleRunner>(store_, chain);
  if (embedding_ && head_) runner_->tie(*wte_, {0, chain.size() - 1});
}

void Gpt2::collect_parameters(std::vector<Parameter*>& out) const {
  if (embedding_) {
    embedding_->collect_parameters(out);
  } else if (wte_) {
    out.push_back(wte_);
  }
  for (const auto& b : blocks_) b->collect_parameters(out);
  if (ln_f_) ln_f_->collect_parameters(out);
}

void Gpt2::init_weights(uint64_t seed) {
  auto into = [](ParameterStore& store) -> ParamSink {
    if (store.all().empty()) return {};
    Tensor& flat = store.flat_params();
    DS_ASSERT(flat.defined(), "init_weights(seed) needs resident parameters; pass a sink");
    return [&flat](int64_t offset, const float* values, int64_t n) {
      std::copy(values, values + n, flat.data<float>() + offset);
    };
  };
  init_weights(seed, into(store_), into(expert_store_));
}

void Gpt2::check_against_spec() const {
  // Each store holds its weights in the spec's order: the dense ones, and the experts this rank holds.
  auto check = [&](const ParameterStore& store, bool experts) {
    std::vector<Gpt2Weight> spec;  // the weights this store's layers use, in the spec's order
    for (const Gpt2Weight& w : config_.weight_spec())
      if ((w.expert >= 0) == experts &&
          std::any_of(store.all().begin(), store.all().end(), [&](const Parameter& p) { return p.name == w.name; }))
        spec.push_back(w);
    const auto& params = store.all();
    DS_ASSERT(params.size() == spec.size(), "GPT-2 declares {} parameters, its weight spec {}", params.size(),
              spec.size());
    for (size_t i = 0; i < spec.size(); ++i) {
      DS_ASSERT(params[i].name == spec[i].name &&
                params[i].full_shape() == Shape(spec[i].shape.begin(), spec[i].shape.end()), "GPT-2 parameter {} is "
                "'{}' {}, its weight spec says '{}' {}", i, params[i].name, fmt::join(params[i].full_shape(), "x"),
                spec[i].name, fmt::join(spec[i].shape, "x"));
    }
  };
  check(store_, false);
  check(expert_store_, true);
}

void Gpt2::init_weights(uint64_t seed, const ParamSink& sink, const ParamSink& expert_sink) {
  Rng rng(seed);
  const float proj_std = 0.02f / std::sqrt(2.0f * config_.n_layer);
  // Values are drawn for every weight of the spec in its order, so each stage and tensor-parallel rank keeps the
  // values the whole model would have.
  const std::vector<Gpt2Weight> spec = config_.weight_spec();
  std::vector<float> piece(size_t{1} << 16);
  for (size_t k = 0; k < spec.size(); ++k) {
    const bool is_expert = spec[k].expert >= 0;
    const Parameter* held = (is_expert ? expert_store_ : store_).find(spec[k].name);
    const ParamSink& to = is_expert && expert_sink ? expert_sink : sink;
    float fill = 0.0f, stdv = 0.0f;  // a constant, or N(0, stdv) when stdv > 0
    switch (spec[k].role) {
      case Gpt2Role::lnf_w: case Gpt2Role::ln1_w: case Gpt2Role::ln2_w: fill = 1.0f; break;
      case Gpt2Role::lnf_b: case Gpt2Role::ln1_b: case Gpt2Role::ln2_b: case Gpt2Role::qkv_b: case Gpt2Role::proj_b:
      case Gpt2Role::fc_b: case Gpt2Role::fc2_b: case Gpt2Role::moe_coef_b: case Gpt2Role::expert_fc_b:
      case Gpt2Role::expert_fc2_b: break;
      // the residual projections
      case Gpt2Role::proj_w: case Gpt2Role::fc2_w: case Gpt2Role::expert_fc2_w: stdv = proj_std; break;
      case Gpt2Role::wte: case Gpt2Role::wpe: case Gpt2Role::qkv_w: case Gpt2Role::fc_w: case Gpt2Role::expert_fc_w:
      case Gpt2Role::moe_gate_w: case Gpt2Role::moe_coef_w: stdv = 0.02f; break;
    }
    auto draw = [&](float* out, int64_t n) {
      for (int64_t i = 0; i < n; ++i) out[i] = stdv > 0.0f ? stdv * rng.normal() : fill;
    };
    if (held && held->tp.split()) {  // draw the whole parameter and keep this rank's share
      const Parameter& p = *held;
      std::vector<float> whole(static_cast<size_t>(p.full_shape().numel())), mine(static_cast<size_t>(p.numel()));
      draw(whole.data(), static_cast<int64_t>(whole.size()));
      p.tp.shard(whole.data(), mine.data());
      to(p.offset, mine.data(), p.numel());
      continue;
    }
    const int64_t numel = spec[k].numel();
    for (int64_t first = 0; first < numel;) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(piece.size()), numel - first);
      draw(piece.data(), n);
      if (held) to(held->offset + first, piece.data(), n);
      first += n;
    }
  }
}

int64_t Gpt2::check_tokens(const int32_t* tokens, int B, int T, bool are_targets) const {
  DS_CHECK_AS(ShapeError, B > 0 && T > 0, "[model] batch {} x sequence {} is empty; both must be positive", B, T);
  DS_CHECK_AS(ShapeError, T <= config_.block_size,
              "[model] sequence length {} exceeds the model's block_size {}; use a shorter sequence or a model "
              "with a larger block_size",
              T, config_.block_size);
  DS_CHECK_AS(ShapeError, int64_t(B) * T <= INT32_MAX / std::max(config_.n_embd * 4, 1),
              "[model] a micro-batch of {} x {} tokens is too large for one pass; use a smaller micro-batch", B, T);
  const int64_t n = int64_t(B) * T;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    const bool ok = (t >= 0 && t < config_.vocab_size) || (are_targets && t == -1);
    DS_CHECK_AS(ShapeError, ok,
                "[model] {} id {} at position {} is outside the vocabulary [0, {}); the data was probably made "
                "with another tokenizer: prepare it again with this model's tokenizer, or raise vocab_size",
                are_targets ? "target" : "input", t, i, config_.vocab_size);
    count += t >= 0;
  }
  DS_CHECK_AS(ShapeError, !are_targets || count > 0,
              "[model] every target in the batch is -1 (ignored), so there is nothing to learn from; check the data");
  return count;
}

float Gpt2::forward_backward(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T,
                             float grad_scale, uint64_t noise_seed, MoeStats* moe) {
  const int64_t count = check_tokens(targets, B, T, true);
  check_tokens(inputs, B, T, false);
  Pass pass{.inputs = inputs, .targets = targets, .B = B, .T = T,
            .grad_scale = grad_scale / static_cast<float>(count), .loss_term_scale = grad_scale,
            .noise_seed = noise_seed, .moe = moe};
  runner_->train(ctx, pass);
  return static_cast<float>(pass.loss_sum / static_cast<double>(count));
}

float Gpt2::forward_loss(Ctx& ctx, const int32_t* inputs, const int32_t* targets, int B, int T) {
  const int64_t count = check_tokens(targets, B, T, true);
  check_tokens(inputs, B, T, false);
  Pass pass{.inputs = inputs, .targets = targets, .B = B, .T = T};
  runner_->evaluate(ctx, pass);
  return static_cast<float>(pass.loss_sum / static_cast<double>(count));
}

void Gpt2::forward_logits(Ctx& ctx, const int32_t* inputs, int B, int T, float* logits) {
  check_tokens(inputs, B, T, false);
  Pass pass{.inputs = inputs, .B = B, .T = T, .logits = logits};
  runner_->evaluate(ctx, pass);
}

}  // namespace ds::nn
