// ZeRO benchmark (see zero_bench.h). Each (world, stage) cell is its own child job, so the peak RSS of a rank is
// that configuration's alone; children write one "RESULT {json}" line per rank on stdout and their stderr goes to a
// temporary file whose tail is printed when the job fails. Children get MALLOC_MMAP_MAX_=0 and a huge
// MALLOC_TRIM_THRESHOLD_ (machine notes: OpenMPI's temporary buffers otherwise page-fault on every collective),
// world 1 included, so that every cell runs under the same allocator settings.
#include "bench/zero_bench.h"

#include "bench/bench_child.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <thread>

#include "ds/comm/comm_factory.h"
#include "ds/core/error.h"
#include "ds/core/strings.h"
#include "ds/core/memory.h"
#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/engine/engine.h"

namespace ds {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kRssTarget = 0.40;   // stage 3 peak RSS / stage 0 peak RSS at N = 4
constexpr double kStepTarget = 1.15;  // stage 1 and 2 step time / stage 0 step time at the same N

// The zero_extra text must hold a JSON object; its keys are added to (and override) the zero_optimization block.
nlohmann::json parse_zero_extra(const std::string& text) {
  if (text.empty()) return nlohmann::json::object();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    DS_THROW(ConfigError, "[bench] --zero-extra is not valid JSON ({}); give an object such as "
             "'{{\"stage3_max_reuse_distance\": 0}}'", e.what());
  }
  DS_CHECK_AS(ConfigError, j.is_object(), "[bench] --zero-extra must be a JSON object of zero_optimization keys; "
              "found '{}'", text);
  return j;
}

std::string config_json(const ZeroBenchOnceOptions& o) {
  nlohmann::json zero = {{"stage", o.stage}};
  if (o.overlap_comm != "default") zero["overlap_comm"] = o.overlap_comm == "true";
  const nlohmann::json extra = parse_zero_extra(o.zero_extra);  // named: items() of a temporary would dangle
  for (const auto& [key, value] : extra.items()) zero[key] = value;
  const nlohmann::json c = {
      {"train_micro_batch_size_per_gpu", o.micro},
      {"gradient_accumulation_steps", 1},
      {"optimizer",
       {{"type", "AdamW"},
        {"params", {{"lr", 3e-4}, {"betas", {0.9, 0.95}}, {"eps", 1e-8}, {"weight_decay", 0.1}}}}},
      {"zero_optimization", zero}};
  return c.dump();
}

ZeroBenchRankResult measure(comm::Communicator& comm, const ZeroBenchOnceOptions& o) {
  const int world = comm.size(), rank = comm.rank();
  omp_set_num_threads(o.threads > 0 ? o.threads : std::max(1, omp_get_num_procs() / world));
  const nn::Gpt2Config mc = nn::Gpt2Config::from_spec(o.model);
  const config::DeepSpeedConfig cfg = config::parse_config(config_json(o), world, "zero-bench");
  MemoryTracker& tracker = current_tracker();

  ZeroBenchRankResult r;
  r.rank = rank, r.world = world, r.stage = o.stage;
  r.psi = mc.num_params();
  const auto t_init = std::chrono::steady_clock::now();
  engine::Engine engine(mc, cfg, o.seq_len, &comm, o.seed);
  r.init_s = seconds_since(t_init);

  // Random tokens, different on every rank and step.
  Rng rng(o.seed * 0x9E3779B97F4A7C15ull + 1000003ull * static_cast<uint64_t>(rank) + 1);
  const int T = o.seq_len;
  std::vector<int32_t> row(size_t(T) + 1);
  auto next = [&](int32_t* in, int32_t* tg) {
    for (int b = 0; b < o.micro; ++b) {
      for (auto& t : row) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(mc.vocab_size));
      std::copy(row.begin(), row.end() - 1, in + size_t(b) * T);
      std::copy(row.begin() + 1, row.end(), tg + size_t(b) * T);
    }
  };

  std::vector<double> times;
  int64_t bytes_before = 0;
  for (int step = 0; step < o.steps; ++step) {
    if (step == o.warmup) bytes_before = comm.stats().total_bytes();
    comm.barrier();  // every rank starts the step together (a barrier counts no bytes)
    const auto t0 = std::chrono::steady_clock::now();
    const engine::StepResult s = engine.train_batch(next);
    const double dt = seconds_since(t0);
    if (step >= o.warmup) times.push_back(dt);
    if (step == 0) r.loss_first = s.loss;
    r.loss_last = s.loss;
  }
  const int timed = o.steps - o.warmup;
  r.bytes_per_step = static_cast<double>(comm.stats().total_bytes() - bytes_before) / timed;
  r.median_step_s = median(times);
  r.peak_param = tracker.peak(Tier::device, Category::param);
  r.peak_grad = tracker.peak(Tier::device, Category::grad);
  r.peak_optimizer = tracker.peak(Tier::device, Category::optimizer);
  r.peak_comm_buffer = tracker.peak(Tier::device, Category::comm_buffer);
  r.peak_comm_buffer_host = tracker.peak(Tier::host, Category::comm_buffer);
  r.peak_activation = tracker.peak(Tier::device, Category::activation);
  r.peak_rss_mib = peak_rss_mib();
  return r;
}


std::string join(const std::vector<int>& v) { return fmt::format("{}", fmt::join(v, ",")); }

// One (world, stage) configuration over the repetitions. After the last one, r0.median_step_s and max_rss_mib are
// medians over repetitions; the tracked bytes and traffic (deterministic) are the last repetition's.
struct Cell {
  int world = 0, stage = 0;
  bool ok = true;          // no repetition failed
  ZeroBenchRankResult r0;  // rank 0
  double max_rss_mib = 0;  // over ranks
  double wall_s = 0;       // of all repetitions
  std::vector<double> step_s, rss_mib;  // per repetition
};

}  // namespace

std::string ZeroBenchRankResult::to_json() const {
  nlohmann::json j = {{"rank", rank},
                      {"world", world},
                      {"stage", stage},
                      {"psi", psi},
                      {"peak_param", peak_param},
                      {"peak_grad", peak_grad},
                      {"peak_optimizer", peak_optimizer},
                      {"peak_comm_buffer", peak_comm_buffer},
                      {"peak_comm_buffer_host", peak_comm_buffer_host},
                      {"peak_activation", peak_activation},
                      {"peak_rss_mib", peak_rss_mib},
                      {"init_s", init_s},
                      {"median_step_s", median_step_s},
                      {"bytes_per_step", bytes_per_step},
                      {"loss_first", loss_first},
                      {"loss_last", loss_last}};
  return j.dump();
}

ZeroBenchRankResult ZeroBenchRankResult::from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);
  ZeroBenchRankResult r;
  r.rank = j.at("rank").get<int>();
  r.world = j.at("world").get<int>();
  r.stage = j.at("stage").get<int>();
  r.psi = j.at("psi").get<int64_t>();
  r.peak_param = j.at("peak_param").get<int64_t>();
  r.peak_grad = j.at("peak_grad").get<int64_t>();
  r.peak_optimizer = j.at("peak_optimizer").get<int64_t>();
  r.peak_comm_buffer = j.at("peak_comm_buffer").get<int64_t>();
  r.peak_comm_buffer_host = j.at("peak_comm_buffer_host").get<int64_t>();
  r.peak_activation = j.at("peak_activation").get<int64_t>();
  r.peak_rss_mib = j.at("peak_rss_mib").get<double>();
  r.init_s = j.at("init_s").get<double>();
  r.median_step_s = j.at("median_step_s").get<double>();
  r.bytes_per_step = j.at("bytes_per_step").get<double>();
  r.loss_first = j.at("loss_first").get<double>();
  r.loss_last = j.at("loss_last").get<double>();
  return r;
}

ZeroBenchRankResult run_zero_bench_once(const ZeroBenchOnceOptions& o) {
  DS_CHECK_AS(ConfigError, o.warmup >= 0 && o.steps > o.warmup,
              "[bench] --steps ({}) must exceed --warmup ({}) so that at least one step is timed", o.steps, o.warmup);
  DS_CHECK_AS(ConfigError, o.stage >= 0 && o.stage <= 3, "[bench] --stage must be 0, 1, 2 or 3; found {}", o.stage);
  DS_CHECK_AS(ConfigError, o.micro > 0 && o.seq_len > 0, "[bench] --micro ({}) and --seq-len ({}) must be positive",
              o.micro, o.seq_len);
  DS_CHECK_AS(ConfigError, o.overlap_comm == "default" || o.overlap_comm == "true" || o.overlap_comm == "false",
              "[bench] --overlap-comm must be default, true or false; found '{}'", o.overlap_comm);
  std::unique_ptr<comm::Communicator> comm = comm::make_world_communicator(o.backend);
  try {
    return measure(*comm, o);
  } catch (const std::exception& e) {
    // A peer may sit in a collective: end the job rather than let it hang (abort prints the rank and the reason).
    if (comm->size() > 1) comm->abort(e.what());
    throw;
  }
}

double zero_memory_formula_bytes(int stage, double psi, int world) {
  const double n = world;
  switch (stage) {
    case 0: return 16 * psi;
    case 1: return 8 * psi + 8 * psi / n;
    case 2: return 4 * psi + 12 * psi / n;
    default: return 16 * psi / n;
  }
}

double zero_traffic_formula_bytes(int stage, double psi, int world) {
  const double elements = (stage == 3 ? 3.0 : 2.0) * psi * (world - 1) / world;
  return 4.0 * elements;
}

std::string run_zero_bench(const ZeroBenchOptions& o) {
  DS_CHECK_AS(ConfigError, o.warmup >= 0 && o.steps > o.warmup,
              "[bench] --steps ({}) must exceed --warmup ({}) so that at least one step is timed", o.steps, o.warmup);
  DS_CHECK_AS(ConfigError, !o.worlds.empty() && !o.stages.empty(), "[bench] --worlds and --stages must not be empty");
  for (int w : o.worlds) DS_CHECK_AS(ConfigError, w >= 1, "[bench] world sizes must be at least 1; found {}", w);
  for (int s : o.stages) DS_CHECK_AS(ConfigError, s >= 0 && s <= 3, "[bench] stages are 0-3; found {}", s);
  DS_CHECK_AS(ConfigError, o.child_timeout_s > 0 && o.reps > 0, "[bench] --child-timeout and --reps must be positive");
  DS_CHECK_AS(ConfigError, o.overlap_comm == "default" || o.overlap_comm == "true" || o.overlap_comm == "false",
              "[bench] --overlap-comm must be default, true or false; found '{}'", o.overlap_comm);
  parse_zero_extra(o.zero_extra);  // a bad --zero-extra fails here, once
  const nn::Gpt2Config mc = nn::Gpt2Config::from_spec(o.model);  // fails here, not in every child, when unknown
  const double psi = static_cast<double>(mc.num_params());
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const bool root = ::geteuid() == 0;

  fmt::print("dspeed bench zero: {} (Ψ = {} parameters), T{}, micro-batch {}, gas 1, AdamW fp32, {} steps ({} "
             "warmup), {} repetition{}, overlap_comm {}{}, {} cores\n",
             o.model, mc.num_params(), o.seq_len, o.micro, o.steps, o.warmup, o.reps, o.reps == 1 ? "" : "s",
             o.overlap_comm,
             o.zero_extra.empty() ? std::string() : ", zero_optimization += " + o.zero_extra, cores);
  std::fflush(stdout);

  std::vector<Cell> cells;
  for (int world : o.worlds)
    for (int stage : o.stages) {
      cells.emplace_back();
      cells.back().world = world, cells.back().stage = stage;
    }
  std::vector<std::string> failures;
  for (int rep = 0; rep < o.reps; ++rep) {  // interleaved: every configuration once per repetition
    for (Cell& cell : cells) {
      if (!cell.ok) continue;  // failed once: not retried
      const int world = cell.world, stage = cell.stage;
      const int threads = o.threads > 0 ? o.threads : std::max(1, cores / world);
      const std::string env = fmt::format("OMP_NUM_THREADS={} MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184",
                                          threads);
      const std::string args = fmt::format(
          "{} bench zero-once --model {} --stage {} --steps {} --warmup {} --seq-len {} --micro {} --threads {} "
          "--overlap-comm {} --backend {}{}",
          shell_quote(o.self_exe), shell_quote(o.model), stage, o.steps, o.warmup, o.seq_len, o.micro, threads,
          o.overlap_comm, world == 1 ? "self" : "mpi",
          o.zero_extra.empty() ? std::string() : " --zero-extra " + shell_quote(o.zero_extra));
      std::string cmd;
      if (world == 1) {
        cmd = fmt::format("env {} timeout -k 10 {} {}", env, o.child_timeout_s, args);
      } else {
        const std::string xs = fmt::format(
            " -x OMP_NUM_THREADS={} -x MALLOC_MMAP_MAX_=0 -x MALLOC_TRIM_THRESHOLD_=17179869184", threads);
        cmd = fmt::format("env {} timeout -k 10 {} {}{} --oversubscribe --bind-to none -np {}{} {}", env,
                          o.child_timeout_s, shell_quote(o.mpirun), root ? " --allow-run-as-root" : "", world, xs,
                          args);
      }
      fmt::print(stderr, "{}world {} stage {} ({} thread{} per rank) ... ",
                 o.reps > 1 ? fmt::format("rep {}/{}: ", rep + 1, o.reps) : std::string(), world, stage, threads,
                 threads == 1 ? "" : "s");
      std::fflush(stderr);
      const ChildOutcome c = run_child(cmd, world, o.child_timeout_s);
      std::vector<ZeroBenchRankResult> ranks;
      for (const std::string& r : c.results) ranks.push_back(ZeroBenchRankResult::from_json(r));
      cell.wall_s += c.wall_s;
      if (c.ok) {
        double rss = 0;
        for (const auto& r : ranks) {
          if (r.rank == 0) cell.r0 = r;
          rss = std::max(rss, r.peak_rss_mib);
        }
        cell.step_s.push_back(cell.r0.median_step_s);
        cell.rss_mib.push_back(rss);
        fmt::print(stderr, "{:.0f} s (step {:.2f} s)\n", c.wall_s, cell.r0.median_step_s);
      } else {
        cell.ok = false;
        fmt::print(stderr, "FAILED after {:.0f} s: {}", c.wall_s, c.failure);
        failures.push_back(fmt::format("world {} stage {}", world, stage));
      }
      std::fflush(stderr);
    }
  }
  for (Cell& cell : cells) {
    if (!cell.ok) continue;
    cell.r0.median_step_s = median(cell.step_s);
    cell.max_rss_mib = median(cell.rss_mib);
  }

  // ---- table ----
  fmt::print("\n{:>5} {:>5} {:>12} {:>11} {:>6} {:>10} {:>10} {:>8} {:>12} {:>12} {:>6}\n", "world", "stage",
             "states MiB", "formula MiB", "ratio", "comm MiB", "RSS MiB", "step s", "traffic MiB", "formula MiB",
             "ratio");
  nlohmann::json rows = nlohmann::json::array();
  for (const Cell& c : cells) {
    const double formula = zero_memory_formula_bytes(c.stage, psi, c.world);
    const double traffic_formula = zero_traffic_formula_bytes(c.stage, psi, c.world);
    if (!c.ok) {
      fmt::print("{:>5} {:>5} {:>12} {:>11.1f}   (failed: see above)\n", c.world, c.stage, "-", formula / kMiB);
      rows.push_back({{"world", c.world}, {"stage", c.stage}, {"ok", false}});
      continue;
    }
    const ZeroBenchRankResult& r = c.r0;
    const double states = static_cast<double>(r.model_states());
    const double comm = static_cast<double>(r.peak_comm_buffer + r.peak_comm_buffer_host);
    const std::string traffic_ratio =
        traffic_formula > 0 ? fmt::format("{:.3f}", r.bytes_per_step / traffic_formula) : std::string("-");
    fmt::print("{:>5} {:>5} {:>12.1f} {:>11.1f} {:>6.3f} {:>10.1f} {:>10.0f} {:>8.3f} {:>12.1f} {:>12.1f} {:>6}\n",
               c.world, c.stage, states / kMiB, formula / kMiB, states / formula, comm / kMiB, c.max_rss_mib,
               r.median_step_s, r.bytes_per_step / kMiB, traffic_formula / kMiB, traffic_ratio);
    nlohmann::json row = nlohmann::json::parse(r.to_json());
    row["ok"] = true;
    row["model_states_bytes"] = r.model_states();
    row["formula_bytes"] = formula;
    row["memory_ratio"] = states / formula;
    row["comm_buffer_bytes"] = r.peak_comm_buffer + r.peak_comm_buffer_host;
    row["peak_rss_mib_max"] = c.max_rss_mib;
    row["traffic_formula_bytes"] = traffic_formula;
    row["traffic_ratio"] = traffic_formula > 0 ? nlohmann::json(r.bytes_per_step / traffic_formula) : nlohmann::json();
    row["child_wall_s"] = c.wall_s;
    row["step_s_by_rep"] = c.step_s;
    row["peak_rss_mib_max_by_rep"] = c.rss_mib;
    rows.push_back(row);
  }
  fmt::print("states: tracked peaks of param + grad + optimizer (device tier), rank 0; formula: 16Ψ, 8Ψ+8Ψ/N, "
             "4Ψ+12Ψ/N, 16Ψ/N bytes.\ncomm: ZeRO buffers (device) + communicator staging (host), rank 0; RSS: the "
             "largest peak RSS over ranks; step: rank 0's median step time{};\ntraffic: bytes rank 0 sent per step "
             "(ring convention) vs 2Ψ(N-1)/N x 4 bytes (3Ψ(N-1)/N for stage 3).\n",
             o.reps > 1 ? fmt::format(" (RSS and step: medians over {} repetitions)", o.reps) : std::string());

  // ---- the targets ----
  auto find = [&](int world, int stage) -> const Cell* {
    for (const Cell& c : cells)
      if (c.world == world && c.stage == stage && c.ok) return &c;
    return nullptr;
  };
  nlohmann::json targets;
  const Cell *s0n4 = find(4, 0), *s3n4 = find(4, 3);
  if (s0n4 && s3n4) {
    const double ratio = s3n4->max_rss_mib / s0n4->max_rss_mib;
    fmt::print("\nstage 3 peak RSS at N=4 / stage 0 peak RSS at N=4: {:.0f} / {:.0f} MiB = {:.3f} (target <= {:.2f}) "
               "{}\n",
               s3n4->max_rss_mib, s0n4->max_rss_mib, ratio, kRssTarget, ratio <= kRssTarget ? "MET" : "NOT MET");
    if (ratio > kRssTarget && o.zero_extra.find("stage3_max_reuse_distance") == std::string::npos) {
      fmt::print("  (DeepSpeed's default stage3_max_reuse_distance of 1e9 elements keeps every unit of a smaller model "
                 "gathered from forward to backward; add --zero-extra "
                 "'{{\"stage3_max_reuse_distance\":0,\"stage3_max_live_parameters\":1.5e7}}' to release them)\n");
    }
    targets["rss_stage3_over_stage0_n4"] = ratio;
  } else {
    fmt::print("\nstage 3 peak RSS at N=4 / stage 0 peak RSS at N=4: n/a (needs world 4 with stages 0 and 3)\n");
    targets["rss_stage3_over_stage0_n4"] = nullptr;
  }
  targets["rss_target"] = kRssTarget;
  double worst = 0;
  std::string parts;
  nlohmann::json step_ratios = nlohmann::json::object();
  for (int world : o.worlds) {
    const Cell* base = find(world, 0);
    if (!base) continue;
    for (int stage : {1, 2}) {
      const Cell* c = find(world, stage);
      if (!c) continue;
      const double ratio = c->r0.median_step_s / base->r0.median_step_s;
      worst = std::max(worst, ratio);
      parts += fmt::format("{}N={} stage {}: {:.3f}", parts.empty() ? "" : ", ", world, stage, ratio);
      step_ratios[std::to_string(world)][std::to_string(stage)] = ratio;
    }
  }
  if (parts.empty()) {
    fmt::print("stage 1 and 2 step time / stage 0 step time at the same N: n/a (needs stage 0 with 1 or 2)\n");
    targets["step_ratio_max"] = nullptr;
  } else {
    fmt::print("stage 1 and 2 step time / stage 0 step time at the same N: {}; worst {:.3f} (target <= {:.2f}) {}\n",
               parts, worst, kStepTarget, worst <= kStepTarget ? "MET" : "NOT MET");
    targets["step_ratio_max"] = worst;
  }
  targets["step_ratios"] = step_ratios;
  targets["step_target"] = kStepTarget;

  const nlohmann::json j = {{"bench", "zero"},
                            {"model", o.model},
                            {"psi", mc.num_params()},
                            {"seq_len", o.seq_len},
                            {"micro", o.micro},
                            {"steps", o.steps},
                            {"warmup", o.warmup},
                            {"reps", o.reps},
                            {"overlap_comm", o.overlap_comm},
                            {"zero_extra", o.zero_extra},
                            {"worlds", join(o.worlds)},
                            {"stages", join(o.stages)},
                            {"cores", cores},
                            {"rows", rows},
                            {"targets", targets},
                            {"failed", failures.size()}};
  const std::string line = j.dump();
  fmt::print("RESULT {}\n", line);
  std::fflush(stdout);
  if (!o.json_out.empty()) {
    std::FILE* f = std::fopen(o.json_out.c_str(), "a");
    DS_CHECK_AS(IoError, f != nullptr, "[bench] cannot append to '{}'", o.json_out);
    std::fprintf(f, "%s\n", line.c_str());
    std::fclose(f);
  }
  if (!failures.empty()) {
    DS_THROW(IoError, "[bench] {} of {} ZeRO benchmark runs failed ({}); their stderr is printed above",
             failures.size(), cells.size(), fmt::join(failures, ", "));
  }
  return line;
}

}  // namespace ds
