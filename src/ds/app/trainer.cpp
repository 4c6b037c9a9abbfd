// The `dspeed train` job. Validation uses whole held-out documents (val.bin) read in order, so the figure is
// comparable between runs; the periodic passes use the first --eval-batches batches (16 by default), the final
// pass as many (all of them by default, so that it equals `dspeed eval` on the saved model).
#include "ds/app/trainer.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>

#include "ds/comm/comm_factory.h"
#include "ds/comm/topology.h"
#include "ds/core/log.h"
#include "ds/core/stats.h"
#include "ds/data/data_loader.h"
#include "ds/data/prepare.h"
#include "ds/engine/engine.h"
#include "ds/zero/quantized_comm.h"
#include "ds/app/plot.h"
#include "ds/app/progress.h"
#include "ds/monitor/monitor.h"

namespace ds::app {

const char* const kDefaultTrainConfig = R"({
  "train_micro_batch_size_per_gpu": "auto",
  "gradient_accumulation_steps": "auto",
  "optimizer": {
    "type": "AdamW",
    "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
  },
  "scheduler": {
    "type": "WarmupCosineLR",
    "params": {"total_num_steps": "auto", "warmup_num_steps": "auto", "warmup_type": "linear", "cos_min_ratio": 0.1}
  },
  "fp16": {"enabled": "auto"},
  "bf16": {"enabled": "auto"},
  "gradient_clipping": "auto",
  "steps_per_print": 50
})";

int64_t parse_byte_size(const std::string& text) {
  static const std::regex re(R"(^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$)",
                             std::regex::icase);
  std::smatch m;
  DS_CHECK_AS(ConfigError, std::regex_match(text, m, re),
              "[train] cannot read '{}' as a memory size; write e.g. 2GiB, 512MiB or 1e9", text);
  double v = std::stod(m[1].str());
  std::string unit = m[2].str();
  if (!unit.empty()) {
    const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0])));
    const double base = unit.find_first_of("iI") != std::string::npos ? 1024.0 : 1000.0;
    const int power = u == 'K' ? 1 : u == 'M' ? 2 : u == 'G' ? 3 : u == 'T' ? 4 : 0;
    v *= std::pow(base, power);
  }
  DS_CHECK_AS(ConfigError, v >= 1.0 && v < 9.2e18, "[train] memory size '{}' is out of range; give a positive size "
              "below 8 EiB, e.g. 2GiB", text);
  return static_cast<int64_t>(v);
}

namespace {

namespace fs = std::filesystem;

void ensure_data(const TrainOptions& o) {
  const fs::path dir(o.data_dir);
  if (fs::exists(dir / "train.bin") && fs::exists(dir / "val.bin")) return;
  // Only the default location is prepared on the fly: a --data folder that lacks its shards is a mistake to report,
  // not a place to tokenize the bundled corpus into.
  DS_CHECK_AS(IoError, !o.data_given,
              "[train] --data '{}' has no token shards (expected {} and {}); prepare them with `dspeed data prepare "
              "--input TEXT_DIR --out {}`, or leave out --data to train on the bundled corpus",
              o.data_dir, (dir / "train.bin").string(), (dir / "val.bin").string(), o.data_dir);
  DS_CHECK_AS(IoError, fs::exists(o.corpus_dir),
              "[train] no token shards in '{}' (train.bin, val.bin) and no corpus at '{}' to prepare them from; run "
              "`dspeed data prepare --input DIR --out {}` first, or pass --data with a prepared folder",
              o.data_dir, o.corpus_dir, o.data_dir);
  log_info("preparing token shards in {} from {} (first run only)", o.data_dir, o.corpus_dir);
  data::PrepareOptions p;
  p.inputs = {o.corpus_dir};
  p.out_dir = o.data_dir;
  p.tokenizer_dir = o.tokenizer_dir;
  p.val_pattern = o.val_pattern;
  const data::PrepareSummary s = data::prepare_dataset(p);
  log_info("prepared {} training documents ({} tokens) and {} validation documents ({} tokens) in {:.1f} s",
           s.train_documents, s.train_tokens, s.val_documents, s.val_tokens, s.seconds);
}

// One row per step. An MoE model's rows add the step's routing (engine::StepResult): the auxiliary loss, the
// dropped fraction and the tokens per expert.
class MetricsCsv {
 public:
  MetricsCsv(const std::string& path, bool moe) : out_(path), moe_(moe) {
    DS_CHECK_AS(IoError, out_.good(), "[train] cannot write metrics file '{}'; check --out", path);
    out_ << "step,loss,val_loss,lr,grad_norm,tokens_per_s,peak_param_mib,peak_grad_mib,peak_optimizer_mib,"
            "peak_activation_mib,peak_workspace_mib,peak_device_mib,peak_rss_mib"
         << (moe ? ",moe_aux_loss,moe_z_loss,moe_dropped_fraction,moe_tokens_min,moe_tokens_mean,moe_tokens_max" : "")
         << "\n";
  }
  void row(int64_t step, double loss, double val_loss, double lr, double gnorm, double tps,
           const engine::StepResult* moe = nullptr) {
    const MemoryTracker& t = current_tracker();
    auto mib = [&](Category c) { return static_cast<double>(t.peak(Tier::device, c)) / (1 << 20); };
    out_ << fmt::format("{},{:.6f},{},{:.6e},{:.6f},{:.1f},{:.1f},{:.1f},{:.1f},{:.1f},{:.1f},{:.1f},{:.1f}", step,
                        loss, std::isnan(val_loss) ? std::string() : fmt::format("{:.6f}", val_loss), lr, gnorm, tps,
                        mib(Category::param), mib(Category::grad), mib(Category::optimizer),
                        mib(Category::activation), mib(Category::workspace),
                        static_cast<double>(t.peak(Tier::device)) / (1 << 20), peak_rss_mib());
    if (moe_ && moe) {
      out_ << fmt::format(",{:.6f},{:.6f},{:.6f},{:.0f},{:.1f},{:.0f}", moe->moe_aux_loss, moe->moe_z_loss,
                          moe->moe_dropped, moe->moe_tokens_min, moe->moe_tokens_mean, moe->moe_tokens_max);
    } else if (moe_) {
      out_ << ",,,,,,";
    }
    out_ << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
  bool moe_;
};

}  // namespace

namespace {

// Traffic per step of one rank: everything, by collective; and the bytes over its data and model groups.
struct StepTraffic {
  comm::CommStats all;
  double data = 0, model = 0;
};

std::string topology_str(const config::DeepSpeedConfig& c) {
  return comm::TopologyShape{c.pipeline_parallel_size, c.dp_world_size, c.tensor_parallel_size}.str();
}

// Per-rank ZeRO report: measured model-state peaks and traffic beside the paper's formulas, with p bytes per
// parameter, g per gradient and k of optimizer state (fp32 Adam: 4 + 4 + 8; mixed precision: 2 + 2 + 12, or
// 2 + 4 + 12 with fp32 gradient accumulation). Ψ is what the rank's model group share holds (under tensor
// parallelism its split parameters are 1/t of the whole ones) and N the data-parallel size. Under tensor
// parallelism the model group's traffic is printed beside Megatron's formula.
void print_zero_report(comm::Communicator& comm, engine::Engine& engine, const StepTraffic& per_step, int seq_len) {
  const MemoryTracker& t = current_tracker();
  auto mib = [](double b) { return b / (1 << 20); };
  constexpr int kFields = 13;
  // Model states wherever they live: offload moves them to the host or nvme tier, the formula counts them all.
  auto states = [&](Category c) {
    return static_cast<float>(mib(double(t.peak(Tier::device, c) + t.peak(Tier::host, c) + t.peak(Tier::nvme, c))));
  };
  const int64_t psi_local = engine.model().params().numel();
  const config::DeepSpeedConfig& config = engine.config();
  nn::Gpt2& model = engine.model();
  const int tp = config.tensor_parallel_size;
  // This rank's formulas for its layers. Megatron: per micro-batch, 2 all-reduces of b·s·h in each block's forward
  // and 2 in its backward (one more forward's 2 when the block is checkpointed), one for the embedding's rows, one
  // for the head's input gradient and the cross-entropy's 3 floats per token; fp32, a ring all-reduce sends
  // 2(t-1)/t. A pipeline stage sends each micro-batch's b·s·h activation on and its input gradient back.
  const double bs = double(config.train_micro_batch_size_per_gpu) * seq_len, bsh = bs * model.config().n_embd;
  const double m = double(config.gradient_accumulation_steps);
  const int per_block = model.runner().checkpointing() ? 6 : 4;
  const double tp_elements = per_block * double(model.blocks().size()) * bsh +
                             (model.has_embedding() ? bsh : 0.0) + (model.has_head() ? bsh + 3 * bs : 0.0);
  const double tp_formula = tp > 1 ? tp_elements * 4 * 2.0 * (tp - 1) / tp * m : 0.0;
  const int pp = config.pipeline_parallel_size;
  const double pp_formula = pp > 1 ? ((model.has_embedding() ? 0 : 1) + (model.has_head() ? 0 : 1)) * bsh * 4 * m : 0.0;
  const auto sent = static_cast<double>(per_step.all.bytes[static_cast<int>(comm::Collective::send)]);
  std::vector<float> mine = {states(Category::param), states(Category::grad), states(Category::optimizer),
                             static_cast<float>(mib(t.peak(Tier::device, Category::comm_buffer) +
                                                    t.peak(Tier::host, Category::comm_buffer))),
                             static_cast<float>(mib(per_step.data)),
                             static_cast<float>(peak_rss_mib()),
                             static_cast<float>(psi_local),
                             static_cast<float>(mib(per_step.model)),
                             static_cast<float>(mib(tp_formula)),
                             static_cast<float>(mib(sent)),
                             static_cast<float>(mib(pp_formula)),
                             static_cast<float>(model.expert_params().numel()),
                             static_cast<float>(mib(double(per_step.all.bytes[static_cast<int>(
                                 comm::Collective::all_to_all)])))};
  const int world = comm.size();
  std::vector<float> all(static_cast<size_t>(kFields * world));
  comm.all_gather(mine.data(), all.data(), kFields, DType::f32);
  if (comm.rank() != 0) return;
  const int stage = config.zero.stage;
  const double n = config.dp_world_size;
  const zero::ZeroPrecision& prec = engine.optimizer_const().precision();
  const double pb = double(dtype_size(prec.params)), gb = double(dtype_size(prec.grads)), kb = prec.mixed() ? 12 : 8;
  auto formula_over = [&](double P, double n) {
    return stage == 0   ? (pb + gb + kb) * P
           : stage == 1 ? (pb + gb) * P + kb * P / n
           : stage == 2 ? pb * P + (gb + kb) * P / n
                        : (pb + gb + kb) * P / n;
  };
  // Gradients reduced once (all-reduce: twice), parameters all-gathered once (stage 3: twice), in their dtypes.
  auto traffic_over = [&](double P, double n) {
    return (stage == 0 ? 2 * gb * P : stage < 3 ? (gb + pb) * P : (gb + 2 * pb) * P) * (n - 1) / n;
  };
  // An MoE model's experts (Pe on a rank) have their states over the expert-data-parallel group of N / ep ranks.
  const double ne = n / engine.topology().expert().size();
  auto formula = [&](double P, double Pe) { return formula_over(P, n) + formula_over(Pe, ne); };
  auto traffic = [&](double P, double Pe) { return traffic_over(P, n) + traffic_over(Pe, ne); };
  const int64_t psi = engine.model().config().num_params();
  fmt::print(stderr, "ZeRO stage {} over {} data-parallel rank(s){}, Ψ = {} parameters{} ({}):\n", stage,
             config.dp_world_size, tp > 1 || pp > 1 ? fmt::format(" ({})", topology_str(config)) : "",
             format_count(static_cast<double>(psi)),
             tp > 1 || pp > 1 ? ", each rank holding its stage's tensor-parallel share" : "",
             prec.mixed() ? fmt::format("{} parameters, {} gradients, fp32 master + Adam", dtype_name(prec.params),
                                        dtype_name(prec.grads))
                          : std::string("fp32 Adam"));
  fmt::print(stderr, "  rank  params MiB  grads MiB  optim MiB  states MiB  formula MiB  ratio  buckets MiB  "
                     "sent/step MiB  ring formula MiB  RSS MiB\n");
  for (int r = 0; r < world; ++r) {
    const float* f = all.data() + r * kFields;
    const double states = double(f[0]) + f[1] + f[2];
    const double P = f[6], Pe = f[11];
    fmt::print(stderr, "  {:>4}  {:>10.1f} {:>10.1f} {:>10.1f} {:>11.1f} {:>12.1f} {:>6.3f} {:>12.1f} {:>14.1f} "
               "{:>17.1f} {:>8.0f}\n",
               r, f[0], f[1], f[2], states, mib(formula(P, Pe)), states / mib(formula(P, Pe)), f[3], f[4],
               mib(traffic(P, Pe)), f[5]);
  }
  fmt::print(stderr, "  (formula in bytes: {}; traffic per step {}Ψ elements over the data group, counted as sent by "
             "a ring: x (N-1)/N)\n",
             stage == 0   ? fmt::format("{}Ψ", pb + gb + kb)
             : stage == 1 ? fmt::format("{}Ψ + {}Ψ + {}Ψ/N", pb, gb, kb)
             : stage == 2 ? fmt::format("{}Ψ + {}Ψ/N", pb, gb + kb)
                          : fmt::format("{}Ψ/N", pb + gb + kb),
             stage == 3 ? 3 : 2);
  const config::ZeroConfig& zc = config.zero;
  if (stage == 3 && (zc.zero_quantized_weights || zc.zero_quantized_gradients || zc.zero_hpz_partition_size > 1)) {
    fmt::print(stderr, "  ZeRO++: {}{}{}; the formulas are plain stage 3's: qwZ sends 1 + 4/{} bytes per gathered "
               "element, qgZ 1/2 + 4/{}, hpZ's secondary copy adds {}Ψ/{} of parameters and its group's gathers "
               "are not in sent/step\n",
               zc.zero_quantized_weights ? "int8 weight all-gather (qwZ)" : "weights gathered whole",
               zc.zero_hpz_partition_size > 1
                   ? fmt::format(", secondary copies over groups of {} (hpZ)", zc.zero_hpz_partition_size)
                   : std::string(),
               zc.zero_quantized_gradients ? ", int4 gradient all-to-all (qgZ)" : "", zero::kQuantizedWeights.block,
               zero::kQuantizedGradients.block, pb,
               std::max<int64_t>(zc.zero_hpz_partition_size, 1));
  }
  if (engine.optimizer().compression() != nullptr) {
    fmt::print(stderr, "  {}: the formula is for its exact steps; its compressed steps send a 1-bit message of each "
               "parameter (1/8 byte, and a 4-byte scale per 256) twice instead (docs/compression.md)\n",
               config.optimizer.compression == config::OptimizerConfig::Compression::onebit_adam ? "1-bit Adam"
                                                                                                 : "0/1 Adam");
  }
  if (model.has_experts()) {
    fmt::print(stderr, "  experts ({} per rank, ep {}): their states over the expert-data group of N/ep = {:g} "
               "rank(s) (the formula's Ψ_e/(N/ep) terms); all-to-all sent per step: ", "Ψ_e",
               engine.topology().expert().size(), ne);
    for (int r = 0; r < world; ++r)
      fmt::print(stderr, "{}rank {} Ψ_e {} {:.1f} MiB", r ? ", " : "", r,
                 format_count(double(all[size_t(r * kFields + 11)])), all[size_t(r * kFields + 12)]);
    fmt::print(stderr, "\n");
  }
  if (tp > 1 || pp > 1) {
    fmt::print(stderr, "  model parallelism ({}): traffic per step and rank beside the formulas\n",
               topology_str(config));
    fmt::print(stderr, "  rank  tensor-parallel MiB  Megatron formula MiB  pipeline sent MiB  activations formula MiB\n");
    for (int r = 0; r < world; ++r) {
      const float* f = all.data() + r * kFields;
      fmt::print(stderr, "  {:>4}  {:>19.2f} {:>21.2f} {:>18.2f} {:>24.2f}\n", r, f[7], f[8], f[9], f[10]);
    }
    fmt::print(stderr, "  (Megatron: ({}L + 2)·b·s·h + 3·b·s fp32 elements all-reduced per micro-batch over a stage's L "
               "blocks, embedding and head, x 2(t-1)/t; pipeline: b·s·h fp32 per micro-batch to each neighbouring "
               "stage)\n", per_block);
  }
  fmt::print(stderr, "  traffic by collective per step (rank 0):");
  for (int c = 0; c < comm::kCollectiveCount; ++c)
    if (per_step.all.bytes[c] > 0)
      fmt::print(stderr, " {} {:.1f} MiB", comm::collective_name(static_cast<comm::Collective>(c)),
                 mib(double(per_step.all.bytes[c])));
  fmt::print(stderr, "\n");
}

TrainSummary run_training_on(const TrainOptions& o, comm::Communicator& comm);

}  // namespace

TrainSummary run_training(const TrainOptions& o) {
  std::unique_ptr<comm::Communicator> comm = comm::make_world_communicator(o.backend);
  if (comm->size() > 1) set_log_rank(comm->rank(), comm->size());
  try {
    return run_training_on(o, *comm);
  } catch (const std::exception& e) {
    if (comm->size() > 1) {
      // Say it once, with the rank, then end every rank: a peer blocked in a collective must not hang.
      log_message(LogLevel::error, e.what());
      comm->abort(e.what());
    }
    throw;
  }
}

namespace {

TrainSummary run_training_on(const TrainOptions& o, comm::Communicator& comm) {
  const auto t_start = std::chrono::steady_clock::now();
  const int rank = comm.rank(), world = comm.size();
  const bool lead = rank == 0;
  const bool show = lead && !o.quiet;
  if (o.threads > 0) omp_set_num_threads(o.threads);
  if (o.device_memory_limit) current_tracker().set_limit(Tier::device, *o.device_memory_limit);
  if (o.host_memory_limit) current_tracker().set_limit(Tier::host, *o.host_memory_limit);

  nn::Gpt2Config model_config = nn::Gpt2Config::from_spec(o.model);
  if (o.expert_parallel_size) {
    DS_CHECK_AS(ConfigError, model_config.moe.enabled(), "[train] --expert-parallel-size {} needs a "
                "Mixture-of-Experts model, but {} has no experts; use --model gpt2-moe or a model file with a \"moe\" "
                "object",
                *o.expert_parallel_size, model_config.name);
    model_config.moe.ep_size = *o.expert_parallel_size;
    model_config.validate();
  }
  DS_CHECK_AS(ConfigError, !o.steps || *o.steps > 0,
              "[train] --steps {} trains nothing; give the run's last step (at least 1). To measure a model without "
              "training it, use `dspeed eval --model CKPT --data DIR`", o.steps.value_or(0));
  config::AutoValues autos = o.autos;
  autos.hidden_size = model_config.n_embd;
  // Where the config leaves the schedule "auto", it spans the run (config_auto.cpp); --steps sets the run's length,
  // so an explicit total_num_steps is no conflict.
  if (o.steps) autos.total_steps.value = *o.steps;
  autos.total_steps.given = false;
  const config::JobShape job{world, o.tensor_parallel_size, o.pipe_parallel_size};
  config::DeepSpeedConfig config =
      o.config_path.empty()
          ? config::parse_config(kDefaultTrainConfig, job, "built-in default config", &autos)
          : config::load_config_file(o.config_path, job, &autos);
  config.activation_checkpointing.enabled = o.checkpoint_activations;
  if (!o.pipe_schedule.empty()) config.pipeline.schedule = o.pipe_schedule;
  DS_CHECK_AS(ConfigError, config.train_micro_batch_size_per_gpu <= (int64_t(1) << 24),
              "[train] train_micro_batch_size_per_gpu is {} in {}; one pass holds at most 2^24 tokens: lower it and "
              "raise gradient_accumulation_steps", config.train_micro_batch_size_per_gpu, config.source);
  DS_CHECK_AS(ConfigError, o.seq_len > 0 && o.seq_len <= model_config.block_size,
              "[train] --seq-len {} must be between 1 and the model's block_size {}", o.seq_len,
              model_config.block_size);
  DS_CHECK_AS(ConfigError, o.eval_batches.value_or(1) > 0 && o.eval_interval >= 0,
              "[train] need --eval-batches > 0 and --eval-interval >= 0 (got {}, {})", o.eval_batches.value_or(1),
              o.eval_interval);
  const int64_t steps =
      o.steps ? *o.steps : (config.scheduler.total_num_steps > 0 ? config.scheduler.total_num_steps : 1000);
  const int64_t eval_batches = o.eval_batches.value_or(16);
  if (lead) ensure_data(o);
  comm.barrier();  // the other ranks read the shards rank 0 may just have written

  const int B = static_cast<int>(config.train_micro_batch_size_per_gpu);
  const int T = o.seq_len;
  const fs::path dir(o.data_dir);
  // Each data-parallel rank reads its own batches; the ranks of one model group read the same ones.
  const comm::TopologyShape layout{config.pipeline_parallel_size, config.dp_world_size, config.tensor_parallel_size};
  const int dp_rank = layout.coords_of(rank).data;
  data::DataLoader train_loader({(dir / "train.bin").string()}, B, T, dp_rank, layout.data, o.seed, true);
  data::DataLoader val_loader({(dir / "val.bin").string()}, B, T, dp_rank, layout.data, o.seed, false);
  DS_CHECK_AS(ConfigError, model_config.vocab_size >= 50257,
              "[train] the GPT-2 tokenizer produces ids up to 50256, but the model's vocab_size is {}; use "
              "vocab_size >= 50257",
              model_config.vocab_size);

  engine::Engine engine(model_config, config, T, &comm, o.seed);
  DS_CHECK_AS(ConfigError, o.load_dir.empty() || o.init_from.empty(),
              "[train] --load resumes a checkpoint (weights, optimizer, step, data position) and --init-from starts "
              "fresh from weights; give one of them");
  DS_CHECK_AS(ConfigError, o.save_interval >= 0, "[train] --save-interval must be >= 0, got {}", o.save_interval);
  if (!o.init_from.empty()) engine.load_weights(o.init_from);
  int64_t first_step = 1;
  if (!o.load_dir.empty()) {
    const nlohmann::json client = engine.load_checkpoint(o.load_dir, o.load_tag);
    DS_CHECK_AS(IoError, client.contains("train_loader"), "[train] the checkpoint in '{}' has no data position "
                "(train_loader); it was not written by dspeed train", o.load_dir);
    data::LoaderState state;
    from_json(client.at("train_loader"), state);
    train_loader.restore(state);
    first_step = engine.global_steps() + 1;
    DS_CHECK_AS(ConfigError, first_step <= steps, "[train] the checkpoint is at step {} and --steps is {}: nothing "
                "is left to train; raise --steps", engine.global_steps(), steps);
  }

  const std::string metrics_path = (fs::path(o.out_dir) / "metrics.csv").string();
  std::optional<MetricsCsv> metrics;
  if (lead) {
    fs::create_directories(o.out_dir);
    metrics.emplace(metrics_path, model_config.moe.enabled());
  }

  const int64_t print_every = config.steps_per_print > 0 ? config.steps_per_print : 50;
  if (show) {
    fmt::print(stderr, "model   {}\n", model_config.str());
    fmt::print(stderr, "config  {}\n", config.source);
    fmt::print(stderr, "{}\n", config.summary());
    if (!config.auto_resolved.empty()) {
      fmt::print(stderr, "auto    {} value(s) filled:", config.auto_resolved.size());
      for (const std::string& r : config.auto_resolved) fmt::print(stderr, "\n          {}", r);
      fmt::print(stderr, "\n");
    }
    fmt::print(stderr, "data    {} train tokens, {} validation tokens ({}); sequence length {}\n",
               format_count(static_cast<double>(train_loader.num_tokens())),
               format_count(static_cast<double>(val_loader.num_tokens())), o.data_dir, T);
    fmt::print(stderr, "run     {} steps x {} tokens, {} rank(s) ({}{}) x {} threads, metrics in {}\n", steps,
               config.train_batch_size * T, world, comm.backend(),
               layout.world() > layout.data ? fmt::format(", {}", layout.str()) : "",
               o.threads > 0 ? o.threads : omp_get_max_threads(), metrics_path);
  }

  auto train_next = [&](int32_t* in, int32_t* tg) { train_loader.next_batch(in, tg); };
  auto val_next = [&](int32_t* in, int32_t* tg) { val_loader.next_batch(in, tg); };
  auto validate = [&](int64_t batches) {
    val_loader.reset();
    return engine.eval_loss(val_next, std::min(batches, val_loader.num_batches()), B);
  };

  TrainSummary sum;
  sum.metrics_path = metrics_path;
  monitor::MonitorMaster monitors(config, rank);
  if (show)
    for (const auto& m : monitors.monitors()) fmt::print(stderr, "monitor {}\n", m->log_dir());
  sum.initial_val_loss = validate(eval_batches);
  if (show) fmt::print(stderr, "initial validation loss {:.4f} (first {} batches)\n", sum.initial_val_loss,
                           std::min(eval_batches, val_loader.num_batches()));

  ProgressBar bar(steps, print_every);
  const auto t_train = std::chrono::steady_clock::now();
  double train_seconds = 0;
  std::vector<double> recent;
  double tps = 0;
  int64_t step = 0;
  double last_val = std::nan("");
  StepTraffic after_first;  // totals after the first step
  auto traffic_now = [&] {
    comm::Topology& topo = engine.topology();
    StepTraffic now{topo.stats(), double(topo.data().stats().total_bytes()), 0.0};
    // ZeRO's traffic: the dense gradients over the data group and the experts' over the expert-data group, without
    // the MoE all-to-all (reported apart) where the expert group is the data group.
    if (&topo.expert_data() != &topo.data()) now.data += double(topo.expert_data().stats().total_bytes());
    if (&topo.expert() == &topo.data())
      now.data -= double(topo.expert().stats().bytes[static_cast<int>(comm::Collective::all_to_all)]);
    if (&topo.model() != &topo.data()) now.model = double(topo.model().stats().total_bytes());
    return now;
  };
  if (show && first_step > 1) fmt::print(stderr, "resumed at step {} from '{}'\n", first_step - 1, o.load_dir);
  const zero::OptimizerStateStore::SwapStats state_swap0 = engine.optimizer().state_store().swap_stats();
  const zero::OptimizerStateStore::SwapStats param_swap0 = engine.optimizer().param_swap_stats();
  auto save = [&] {
    const std::string tag = engine.save_checkpoint(o.save_dir, "", {{"train_loader", train_loader.state()}});
    if (show) bar.message(fmt::format("step {}: checkpoint {}/{}", engine.global_steps(), o.save_dir, tag));
  };
  for (step = first_step; step <= steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const engine::StepResult r = engine.train_batch(train_next);
    const double dt = seconds_since(t0);
    train_seconds += dt;
    sum.tokens += r.tokens;
    tps = static_cast<double>(sum.tokens) / train_seconds;
    DS_CHECK_AS(Error, std::isfinite(r.loss),
                "[train] the loss became {} at step {}; lower the learning rate or enable gradient_clipping", r.loss,
                step);
    recent.push_back(r.loss);
    if (recent.size() > 20) recent.erase(recent.begin());
    double val = std::nan("");
    if (step == first_step) after_first = traffic_now();
    int32_t out_of_time = o.time_limit_s > 0 && seconds_since(t_train) >= o.time_limit_s;
    if (o.time_limit_s > 0 && world > 1) comm.broadcast(&out_of_time, 1, DType::i32, 0);  // rank 0 decides
    const bool last = step == steps || out_of_time;
    if (!last && o.eval_interval > 0 && step % o.eval_interval == 0) {
      val = validate(eval_batches);
      last_val = val;
      if (show) bar.message(fmt::format("step {}: validation loss {:.4f}", step, val));
    }
    if (metrics) metrics->row(step, r.loss, val, r.lr, r.grad_norm, tps, &r);
    if (show && model_config.moe.enabled() && (step % print_every == 0 || last))
      bar.message(fmt::format("step {}: MoE aux loss {:.4f}, {:.1f}% of assignments dropped, tokens per expert "
                              "{:.0f} / {:.1f} / {:.0f} (min / mean / max)", step, r.moe_aux_loss,
                              100 * r.moe_dropped, r.moe_tokens_min, r.moe_tokens_mean, r.moe_tokens_max));
    if (monitors.enabled()) {
      // DeepSpeed's engine events: backward writes the loss at the samples seen before the step; step() then writes
      // the rate and loss scale it leaves for the next step, at the samples seen after it. val_loss is ours.
      const int64_t samples = engine.global_steps() * config.train_batch_size;
      std::vector<monitor::MonitorEvent> events = {
          {"Train/Samples/train_loss", r.loss, samples - config.train_batch_size},
          {"Train/Samples/lr", engine.current_lr(), samples}};
      if (config.fp16.enabled) events.push_back({"Train/Samples/loss_scale", engine.loss_scale(), samples});
      if (!std::isnan(val)) events.push_back({"Train/Samples/val_loss", val, samples});
      monitors.write_events(events);
    }
    if (show && config.activation_checkpointing.profile && o.checkpoint_activations &&
        (step % print_every == 0 || last))
      bar.message(fmt::format("step {}: recomputing checkpointed forwards took {:.1f} ms of the step's {:.1f} ms",
                              step, r.recompute_seconds * 1e3, dt * 1e3));
    if (!o.save_dir.empty() && (last || (o.save_interval > 0 && step % o.save_interval == 0))) save();
    if (show)
      bar.update(step, fmt::format("loss {:.4f} | lr {:.2e} | {} tok/s{}{}", r.loss, r.lr, format_count(tps),
                                   config.fp16.enabled ? fmt::format(" | scale {}", r.loss_scale) : "",
                                   std::isnan(last_val) ? "" : fmt::format(" | val {:.3f}", last_val)));
    if (last) break;
  }
  if (show) bar.finish();
  sum.steps = std::min(step, steps) - first_step + 1;
  StepTraffic per_step;
  if (sum.steps > 1) {
    const StepTraffic now = traffic_now();
    const double steps_after = static_cast<double>(sum.steps - 1);
    for (int c = 0; c < comm::kCollectiveCount; ++c)
      per_step.all.bytes[c] = (now.all.bytes[c] - after_first.all.bytes[c]) / (sum.steps - 1);
    per_step.data = (now.data - after_first.data) / steps_after;
    per_step.model = (now.model - after_first.model) / steps_after;
  }
  sum.seconds = train_seconds;
  sum.tokens_per_s = tps;
  double acc = 0;
  for (double l : recent) acc += l;
  sum.final_train_loss = recent.empty() ? 0.0 : acc / static_cast<double>(recent.size());
  sum.final_val_batches = o.eval_batches ? std::min(*o.eval_batches, val_loader.num_batches())
                                         : val_loader.num_batches();
  sum.final_val_loss = validate(sum.final_val_batches);
  if (metrics)
    metrics->row(engine.global_steps(), sum.final_train_loss, sum.final_val_loss, engine.current_lr(), 0.0, tps);
  if (monitors.enabled())
    monitors.write_events({{"Train/Samples/val_loss", sum.final_val_loss,
                            engine.global_steps() * config.train_batch_size}});
  if (lead) {
    metrics.reset();  // closes the file
    sum.chart_path = (fs::path(o.out_dir) / "loss.svg").string();
    write_loss_svg({read_metrics_csv(metrics_path, fs::path(o.out_dir).filename().string())},
                   fmt::format("{} on {}", model_config.name.empty() ? o.model : model_config.name,
                               fs::path(o.data_dir).filename().string()),
                   sum.chart_path);
  }

  if (show) {
    fmt::print(stderr, "\ntrained {} steps ({} tokens) in {} at {} tokens/s (wall time {})\n", sum.steps,
               format_count(static_cast<double>(sum.tokens)), format_duration(train_seconds), format_count(tps),
               format_duration(seconds_since(t_start)));
    fmt::print(stderr, "train loss (last {} steps) {:.4f}\n", recent.size(), sum.final_train_loss);
    if (engine.skipped_steps() > 0)
      fmt::print(stderr, "fp16: {} of {} steps skipped for overflowing gradients; loss scale now {}\n",
                 engine.skipped_steps(), engine.global_steps(), engine.loss_scale());
    fmt::print(stderr, "validation loss {:.4f} -> {:.4f} nats/token over {} {} validation batches\n",
               sum.initial_val_loss, sum.final_val_loss,
               sum.final_val_batches == val_loader.num_batches() ? "all" : "the first", sum.final_val_batches);
    fmt::print(stderr, "memory  {}peak RSS {:.0f} MiB\n", current_tracker().report(), peak_rss_mib());
    auto swap_line = [&](const char* what, const zero::OptimizerStateStore::SwapStats& swap) {
      if (swap.bytes_read + swap.bytes_written == 0) return;
      const double moved = static_cast<double>(swap.bytes_read + swap.bytes_written);
      fmt::print(stderr, "offload {} on NVMe: read {}, wrote {}, {:.2f} GB/s while transferring ({:.1f} s); "
                 "waited for {:.1f} s ({:.1f}% of training time)\n",
                 what, format_bytes(swap.bytes_read), format_bytes(swap.bytes_written),
                 swap.io_busy_seconds > 0 ? moved / swap.io_busy_seconds / 1e9 : 0.0, swap.io_busy_seconds,
                 swap.stall_seconds, 100.0 * swap.stall_seconds / std::max(train_seconds, 1e-9));
    };
    // Over the training steps (with the validation passes between them), not the initialisation.
    swap_line("optimizer state", engine.optimizer().state_store().swap_stats().since(state_swap0));
    swap_line("parameters", engine.optimizer().param_swap_stats().since(param_swap0));
    fmt::print(stderr, "metrics {}\nchart   {}\n", metrics_path, sum.chart_path);
  }
  if (world > 1 || config.zero.stage > 0) print_zero_report(comm, engine, per_step, T);
  return sum;
}

}  // namespace

}  // namespace ds::app
