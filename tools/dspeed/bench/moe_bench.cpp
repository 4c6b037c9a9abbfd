// `dspeed bench moe` (moe_bench.h).
#include "bench/moe_bench.h"

#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/nn/moe.h"

namespace ds {

namespace {

using Clock = std::chrono::steady_clock;

// One layer's forward and backward over the same input and output gradient, timed as one.
class Variant {
 public:
  Variant(std::string name, int C, int S, uint64_t seed) : name_(std::move(name)), C_(C), S_(S) {
    Rng rng(seed);
    x_.resize(size_t(S) * C), dy_.resize(size_t(S) * C);
    for (float& v : x_) v = rng.normal();
    for (float& v : dy_) v = 1e-3f * rng.normal();
  }
  virtual ~Variant() = default;
  const std::string& name() const { return name_; }
  double run() {
    ctx_.reset();
    nn::Pass pass;
    pass.moe = &stats_;
    const Tensor x = ctx_.act().alloc({S_, C_});
    std::copy(x_.begin(), x_.end(), x.data<float>());
    const auto t0 = Clock::now();
    forward(x, pass);
    const Tensor dy = ctx_.scratch().alloc({S_, C_});
    std::copy(dy_.begin(), dy_.end(), dy.data<float>());
    backward(dy, pass);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }
  const nn::MoeStats& stats() const { return stats_; }

 protected:
  void init(nn::ParameterStore& store, uint64_t seed) {
    Rng rng(seed);
    for (nn::Parameter& p : store.all()) {
      float* d = p.data.data<float>();
      for (int64_t i = 0; i < p.numel(); ++i) d[i] = 0.02f * rng.normal();
    }
  }
  virtual void forward(const Tensor& x, nn::Pass& pass) = 0;
  virtual void backward(const Tensor& dy, nn::Pass& pass) = 0;
  nn::Ctx ctx_;

 private:
  std::string name_;
  int C_, S_;
  std::vector<float> x_, dy_;
  nn::MoeStats stats_;
};

class Dense final : public Variant {
 public:
  Dense(int C, int S, uint64_t seed) : Variant("dense MLP", C, S, seed), mlp_(store_, "mlp", C) {
    store_.materialize();
    init(store_, seed);
  }
  void forward(const Tensor& x, nn::Pass&) override { mlp_.forward(ctx_, x); }
  void backward(const Tensor& dy, nn::Pass&) override { mlp_.backward(ctx_, dy); }

 private:
  nn::ParameterStore store_;
  nn::Mlp mlp_;
};

class Moe final : public Variant {
 public:
  Moe(std::string name, int C, int S, int E, int k, double cf, bool dropless, uint64_t seed)
      : Variant(std::move(name), C, S, seed) {
    nn::MoeOptions o;
    o.gate.num_experts = E, o.gate.k = k, o.gate.capacity_factor = cf, o.gate.drop_tokens = !dropless;
    o.gate.use_rts = false, o.gate.top2_2nd_expert_sampling = false;
    layer_ = std::make_unique<nn::MoeLayer>(store_, experts_, "moe", C, o, nullptr, 0);
    store_.materialize();
    experts_.materialize();
    init(store_, seed);
    init(experts_, seed + 1);
  }
  void forward(const Tensor& x, nn::Pass& pass) override { layer_->forward(ctx_, x, pass); }
  void backward(const Tensor& dy, nn::Pass& pass) override { layer_->backward(ctx_, dy, pass); }

 private:
  nn::ParameterStore store_, experts_;
  std::unique_ptr<nn::MoeLayer> layer_;
};

}  // namespace

std::string run_moe_bench(const MoeBenchOptions& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const int C = o.width, S = o.tokens, E = o.experts;
  std::vector<std::unique_ptr<Variant>> v;
  v.push_back(std::make_unique<Dense>(C, S, o.seed));
  v.push_back(std::make_unique<Moe>("top-1, capacity factor 1.0", C, S, E, 1, 1.0, false, o.seed));
  v.push_back(std::make_unique<Moe>("top-2, capacity factor 1.0", C, S, E, 2, 1.0, false, o.seed));
  v.push_back(std::make_unique<Moe>("top-1, capacity factor 1.25", C, S, E, 1, 1.25, false, o.seed));
  v.push_back(std::make_unique<Moe>("top-1, dropless", C, S, E, 1, 1.0, true, o.seed));
  v.push_back(std::make_unique<Moe>("top-2, capacity factor 1.25", C, S, E, 2, 1.25, false, o.seed));
  v.push_back(std::make_unique<Moe>("top-2, dropless", C, S, E, 2, 1.0, true, o.seed));
  for (auto& x : v) x->run();  // warm-up: arenas, pages
  std::vector<std::vector<double>> times(v.size());
  for (int r = 0; r < o.repeats; ++r)
    for (size_t i = 0; i < v.size(); ++i) times[i].push_back(v[i]->run());
  std::vector<double> med;
  for (auto& t : times) med.push_back(median(t));
  const double dense_flops = 6.0 * S * 2.0 * C * 4.0 * C;  // forward 2 GEMMs, backward 4: 3 x 2 x S x C x 4C x 2
  fmt::print("MoE layer vs dense MLP: {} tokens x width {}, {} experts, forward + backward, {} thread(s), median of "
             "{} interleaved rounds\n", S, C, E, omp_get_max_threads(), o.repeats);
  fmt::print("  {:<30} {:>9} {:>12} {:>10} {:>10}\n", "layer", "ms", "dense GFLOP/s", "x dense", "dropped");
  for (size_t i = 0; i < v.size(); ++i) {
    const nn::MoeStats& s = v[i]->stats();
    const double dropped = s.assignments ? double(s.dropped) / double(s.assignments) : 0.0;
    fmt::print("  {:<30} {:>9.1f} {:>12.1f} {:>10.2f} {:>9.1f}%\n", v[i]->name(), med[i] * 1e3,
               dense_flops / med[i] / 1e9, med[i] / med[0], 100 * dropped);
  }
  const double top1 = med[1] / med[0], top2 = med[2] / med[0];
  const double dropless1 = med[4] / med[3], dropless2 = med[6] / med[5];
  auto verdict = [](bool ok) { return ok ? "meets" : "MISSES"; };
  fmt::print("  top-1 / dense {:.2f}x (target <= 1.3x: {}); top-2 / dense {:.2f}x (target <= 2.4x: {})\n", top1,
             verdict(top1 <= 1.3), top2, verdict(top2 <= 2.4));
  fmt::print("  dropless / capacity factor 1.25: top-1 {:.2f}x, top-2 {:.2f}x (target <= 1.1x: {})\n", dropless1,
             dropless2, verdict(dropless1 <= 1.1 && dropless2 <= 1.1));
  nlohmann::json result = {{"bench", "moe"},       {"tokens", S},          {"width", C},
                           {"experts", E},         {"threads", omp_get_max_threads()},
                           {"dense_ms", med[0] * 1e3}, {"top1_ratio", top1}, {"top2_ratio", top2},
                           {"dropless_top1_ratio", dropless1}, {"dropless_top2_ratio", dropless2}};
  fmt::print("RESULT {}\n", result.dump());
  if (!o.json_out.empty()) std::ofstream(o.json_out, std::ios::app) << result.dump() << "\n";
  return result.dump();
}

}  // namespace ds
