// Training-step benchmark against PyTorch. Children print one "RESULT {json}" line, as torch_gpt.py does.
#include "bench/train_bench.h"

#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/core/child_process.h"
#include "ds/nn/models/gpt2.h"
#include "ds/optim/adamw.h"

namespace ds {

TrainBenchShape TrainBenchShape::from_preset(const std::string& name) {
  TrainBenchShape s;
  s.preset = name;
  if (name == "tiny") {
    s.n_layer = 4, s.n_head = 4, s.n_embd = 128, s.vocab = 512, s.seq_len = 128, s.batch = 8;
  } else if (name == "small") {
    s.n_layer = 6, s.n_head = 6, s.n_embd = 384, s.vocab = 50304, s.seq_len = 256, s.batch = 4;
  } else if (name == "gpt2") {
    s.n_layer = 12, s.n_head = 12, s.n_embd = 768, s.vocab = 50257, s.seq_len = 256, s.batch = 4;
  } else {
    DS_THROW(ConfigError, "[bench] unknown benchmark shape '{}'; choose tiny, small or gpt2", name);
  }
  return s;
}

double TrainBenchShape::step_flops() const {
  const double tokens = double(batch) * seq_len, C = n_embd;
  const double matmul = 2.0 * tokens * (n_layer * 12.0 * C * C + C * vocab);
  const double attention = n_layer * 2.0 * 2.0 * batch * (seq_len * (seq_len + 1) / 2.0) * C;
  return 3.0 * (matmul + attention);
}

double measure_sgemm_gflops(int M, int N, int K, int reps) {
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(K) * N, 0.25f), c(size_t(M) * N);
  std::vector<double> times;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(),
                N);
    if (r > 0) times.push_back(seconds_since(t0));
  }
  return 2.0 * M * N * K / median(times) * 1e-9;
}

TrainBenchOnceResult run_train_bench_once(const TrainBenchShape& s, int steps, int warmup, int threads,
                                          bool checkpoint) {
  DS_CHECK_AS(ConfigError, warmup >= 0 && steps > warmup,
              "[bench] --steps ({}) must exceed --warmup ({}) so that at least one step is timed", steps, warmup);
  if (threads > 0) omp_set_num_threads(threads);
  nn::Gpt2Config mc;
  mc.name = s.preset;
  mc.n_layer = s.n_layer, mc.n_head = s.n_head, mc.n_embd = s.n_embd, mc.vocab_size = s.vocab;
  mc.block_size = s.seq_len;
  nn::Gpt2 model(mc);
  model.init_weights(1337);
  model.runner().set_checkpointing(checkpoint);
  cpu::AdamParams hyper;
  hyper.beta1 = 0.9f, hyper.beta2 = 0.95f, hyper.eps = 1e-8f, hyper.weight_decay = 0.1f;
  optim::AdamW opt(model.params().flat_params(), model.params().flat_grads(), hyper);
  nn::Ctx ctx;
  const int B = s.batch, T = s.seq_len;
  std::vector<int32_t> buf(size_t(B) * (T + 1)), in(size_t(B) * T), tg(size_t(B) * T);
  std::vector<double> times;
  TrainBenchOnceResult r;
  for (int step = 0; step < steps; ++step) {
    Rng rng(1337 + 1000003ull * step);
    for (auto& t : buf) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(s.vocab));
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        in[size_t(b) * T + t] = buf[size_t(b) * (T + 1) + t];
        tg[size_t(b) * T + t] = buf[size_t(b) * (T + 1) + t + 1];
      }
    const auto t0 = std::chrono::steady_clock::now();
    model.params().zero_grad();
    ctx.reset();
    const float loss = model.forward_backward(ctx, in.data(), tg.data(), B, T, 1.0f);
    opt.step(3e-4f);
    const double dt = seconds_since(t0);
    if (step >= warmup) times.push_back(dt);
    if (step == 0) r.loss_first = loss;
    r.loss_last = loss;
  }
  r.median_step_ms = median(times) * 1e3;
  r.tokens_per_s = double(B) * T / median(times);
  r.peak_rss_mb = peak_rss_mib();
  r.peak_activation_mb = static_cast<double>(current_tracker().peak(Tier::device, Category::activation)) / (1 << 20);
  r.peak_workspace_mb = static_cast<double>(current_tracker().peak(Tier::device, Category::workspace)) / (1 << 20);
  return r;
}

namespace {
void append_json_line(const std::string& path, const std::string& line) {
  if (path.empty()) return;
  std::FILE* f = std::fopen(path.c_str(), "a");
  DS_CHECK_AS(IoError, f != nullptr, "[bench] cannot append to '{}'", path);
  std::fprintf(f, "%s\n", line.c_str());
  std::fclose(f);
}

std::string once_command(const TrainBenchOptions& o, bool checkpoint) {
  return fmt::format("OMP_NUM_THREADS={} '{}' bench train-once --preset {} --steps {} --warmup {} --threads {}{}",
                     o.threads, o.self_exe, o.preset, o.steps, o.warmup, o.threads,
                     checkpoint ? " --checkpoint-activations" : "");
}

// Our step without and with activation checkpointing, interleaved child runs; memory is the activation arena plus
// the scratch arena, so the transient of a checkpointed block's first forward is counted.
std::string compare_checkpointing(const TrainBenchOptions& o) {
  std::vector<double> ms[2], act[2], total[2];
  for (int rep = 0; rep < o.reps; ++rep) {
    for (int c = 0; c < 2; ++c) {
      nlohmann::json r = run_child_result(once_command(o, c == 1));
      ms[c].push_back(r["median_step_ms"].get<double>());
      act[c].push_back(r["peak_activation_mb"].get<double>());
      total[c].push_back(r["peak_activation_mb"].get<double>() + r["peak_workspace_mb"].get<double>());
    }
    fmt::print(stderr, "rep {}/{}: step {:.0f} ms -> {:.0f} ms with checkpointing\n", rep + 1, o.reps,
               ms[0].back(), ms[1].back());
  }
  const double m0 = median(ms[0]), m1 = median(ms[1]), a0 = median(act[0]), a1 = median(act[1]);
  const double t0 = median(total[0]), t1 = median(total[1]);
  fmt::print("{:<36}{:>12}{:>12}{:>10}\n", fmt::format("{} (threads {})", o.preset, o.threads), "plain",
             "checkpoint", "ratio");
  fmt::print("{:<36}{:>12.1f}{:>12.1f}{:>10.2f}\n", "step ms (median)", m0, m1, m1 / m0);
  fmt::print("{:<36}{:>12.1f}{:>12.1f}{:>10.2f}\n", "peak activation MiB", a0, a1, a1 / a0);
  fmt::print("{:<36}{:>12.1f}{:>12.1f}{:>10.2f}\n", "peak activation + workspace MiB", t0, t1, t1 / t0);
  nlohmann::json j = {{"preset", o.preset},         {"threads", o.threads},       {"steps", o.steps},
                      {"reps", o.reps},             {"step_ms", m0},              {"step_ms_checkpointed", m1},
                      {"step_time_ratio", m1 / m0}, {"activation_mib", a0},       {"activation_mib_checkpointed", a1},
                      {"activation_ratio", a1 / a0}, {"activation_workspace_mib", t0},
                      {"activation_workspace_mib_checkpointed", t1}, {"activation_workspace_ratio", t1 / t0}};
  const std::string line = j.dump();
  fmt::print("RESULT {}\n", line);
  append_json_line(o.json_out, line);
  return line;
}
}  // namespace

std::string run_train_bench_compare(const TrainBenchOptions& o) {
  DS_CHECK_AS(ConfigError, o.warmup >= 0 && o.steps > o.warmup && o.reps > 0 && o.threads > 0,
              "[bench] need --steps > --warmup >= 0, --reps > 0 and --threads > 0 (got {}, {}, {}, {})", o.steps,
              o.warmup, o.reps, o.threads);
  const TrainBenchShape shape = TrainBenchShape::from_preset(o.preset);
  omp_set_num_threads(o.threads);
  if (o.compare_checkpointing) return compare_checkpointing(o);
  const std::string ours_cmd = once_command(o, o.checkpoint_activations);
  const std::string torch_cmd = fmt::format("'{}' '{}' --config {} --steps {} --warmup {} --threads {}", o.python,
                                            o.torch_script, o.preset, o.steps, o.warmup, o.threads);
  std::vector<double> ours_tps, torch_tps, ours_rss, torch_rss, sgemm;
  for (int rep = 0; rep < o.reps; ++rep) {
    // The sgemm reference uses the GPT-2 MLP shape (1024 tokens, 768 -> 3072).
    sgemm.push_back(measure_sgemm_gflops(1024, 3072, 768, 5));
    nlohmann::json ours = run_child_result(ours_cmd);
    ours_tps.push_back(ours["tokens_per_s"].get<double>());
    ours_rss.push_back(ours["peak_rss_mb"].get<double>());
    if (!o.skip_torch) {
      nlohmann::json theirs = run_child_result(torch_cmd);
      torch_tps.push_back(theirs["tokens_per_s"].get<double>());
      torch_rss.push_back(theirs["peak_rss_mb"].get<double>());
    }
    fmt::print(stderr, "rep {}/{}: ours {:.0f} tok/s{}\n", rep + 1, o.reps, ours_tps.back(),
               o.skip_torch ? std::string() : fmt::format(", pytorch {:.0f} tok/s", torch_tps.back()));
  }
  // Without PyTorch runs its figures are 0 (not NaN), as the table and the RESULT line have always shown.
  const double tps = median(ours_tps), ttps = o.skip_torch ? 0.0 : median(torch_tps);
  const double ours_rss_mb = median(ours_rss), torch_rss_mb = o.skip_torch ? 0.0 : median(torch_rss);
  const double flops = shape.step_flops() * tps / (double(shape.batch) * shape.seq_len) * 1e-9;
  const double sg = median(sgemm);
  nlohmann::json j = {{"preset", o.preset},           {"threads", o.threads},
                      {"steps", o.steps},             {"reps", o.reps},
                      {"ours_tokens_per_s", tps},     {"torch_tokens_per_s", ttps},
                      {"speedup", ttps > 0 ? tps / ttps : 0.0},
                      {"ours_peak_rss_mb", ours_rss_mb},   {"torch_peak_rss_mb", torch_rss_mb},
                      {"ours_gflops", flops},         {"sgemm_gflops", sg},
                      {"fraction_of_sgemm", flops / sg}};
  fmt::print("{:<28}{:>14}{:>14}{:>10}\n", fmt::format("{} (threads {})", o.preset, o.threads), "deepspeed.cpp",
             "pytorch", "ratio");
  fmt::print("{:<28}{:>14.0f}{:>14.0f}{:>10.2f}\n", "tokens/s (median)", tps, ttps, ttps > 0 ? tps / ttps : 0.0);
  fmt::print("{:<28}{:>14.0f}{:>14.0f}{:>10.2f}\n", "peak RSS MB (median)", ours_rss_mb, torch_rss_mb,
             torch_rss_mb > 0 ? ours_rss_mb / torch_rss_mb : 0.0);
  fmt::print("{:<28}{:>14.1f}{:>14}{:>10.2f}\n", "achieved GFLOP/s vs sgemm", flops, fmt::format("{:.1f}", sg),
             flops / sg);
  const std::string line = j.dump();
  fmt::print("RESULT {}\n", line);
  append_json_line(o.json_out, line);
  return line;
}

}  // namespace ds
