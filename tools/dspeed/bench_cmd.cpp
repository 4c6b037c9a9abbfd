// `dspeed bench train`: our training step beside PyTorch's on the same shapes (see docs/performance.md).
// `dspeed bench train-once` is the child process it runs for each of our measurements.
// `dspeed bench zero`: ZeRO stages 0-3 at several world sizes against the paper's memory and traffic formulas;
// `dspeed bench zero-once` (hidden) is one rank of one of its child jobs.
// `dspeed bench decode`: single-stream greedy decoding, ours beside PyTorch's KV-cached decode of the same weights.
// `dspeed bench serve`: the serving policies side by side under concurrent HTTP clients (FastGen's method).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <tuple>

#include "commands.h"
#include "bench/decode_bench.h"
#include "bench/offload_bench.h"
#include "bench/compression_bench.h"
#include "bench/moe_bench.h"
#include "bench/pipeline_bench.h"
#include "bench/train_bench.h"
#include "ds/app/trainer.h"
#include "bench/serve_bench.h"
#include "bench/zero_bench.h"

namespace ds::tool {
namespace {
std::string self_exe() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("dspeed");
}
}  // namespace

void add_bench_command(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("bench", "Benchmarks that print our figures beside a reference");
  cmd->require_subcommand(1);

  auto o = std::make_shared<TrainBenchOptions>();
  CLI::App* train = cmd->add_subcommand("train", "training step: deepspeed.cpp vs PyTorch, interleaved");
  train->add_option("--preset", o->preset, "tiny (L4 C128 V512 T128 B8), small, gpt2 (124M, T256 B4)")
      ->capture_default_str();
  train->add_option("--steps", o->steps, "steps per measurement")->capture_default_str();
  train->add_option("--warmup", o->warmup, "steps not timed")->capture_default_str();
  train->add_option("--threads", o->threads, "threads for both")->capture_default_str();
  train->add_option("--reps", o->reps, "interleaved repetitions")->capture_default_str();
  train->add_option("--python", o->python, "Python with torch")->capture_default_str();
  train->add_option("--torch-script", o->torch_script, "the PyTorch benchmark")->capture_default_str();
  train->add_flag("--skip-torch", o->skip_torch, "measure only ours");
  train->add_flag("--checkpoint-activations", o->checkpoint_activations,
                  "our runs checkpoint every transformer block");
  train->add_flag("--compare-checkpointing", o->compare_checkpointing,
                  "instead of PyTorch: our step without and with activation checkpointing (time, peak memory)");
  train->add_option("--json", o->json_out, "append the result as a JSON line");
  train->callback([o] {
    TrainBenchOptions opts = *o;
    opts.self_exe = self_exe();
    run_train_bench_compare(opts);
  });

  auto once = std::make_shared<std::tuple<std::string, int, int, int, bool>>("tiny", 20, 3, 2, false);
  CLI::App* one = cmd->add_subcommand("train-once", "one measurement of our training step (prints RESULT json)");
  one->add_option("--preset", std::get<0>(*once));
  one->add_option("--steps", std::get<1>(*once));
  one->add_option("--warmup", std::get<2>(*once));
  one->add_option("--threads", std::get<3>(*once));
  one->add_flag("--checkpoint-activations", std::get<4>(*once));
  one->callback([once] {
    const auto& [preset, steps, warmup, threads, checkpoint] = *once;
    const TrainBenchOnceResult r =
        run_train_bench_once(TrainBenchShape::from_preset(preset), steps, warmup, threads, checkpoint);
    nlohmann::json j = {{"preset", preset},
                        {"median_step_ms", r.median_step_ms},
                        {"tokens_per_s", r.tokens_per_s},
                        {"peak_rss_mb", r.peak_rss_mb},
                        {"peak_activation_mb", r.peak_activation_mb},
                        {"peak_workspace_mb", r.peak_workspace_mb},
                        {"loss_first", r.loss_first},
                        {"loss_last", r.loss_last}};
    std::printf("RESULT %s\n", j.dump().c_str());
  });

  auto z = std::make_shared<ZeroBenchOptions>();
  CLI::App* zero = cmd->add_subcommand("zero", "ZeRO stages x world sizes: memory and traffic vs the ZeRO formulas");
  zero->add_option("--model", z->model, "model preset or model JSON file")->capture_default_str();
  zero->add_option("--worlds", z->worlds, "world sizes, comma-separated (default 1,2,4; 1 runs without mpirun)")
      ->delimiter(',')
      ->expected(1, 64);
  zero->add_option("--stages", z->stages, "ZeRO stages, comma-separated (default 0,1,2,3)")
      ->delimiter(',')
      ->expected(1, 64);
  zero->add_option("--steps", z->steps, "training steps per run")->capture_default_str();
  zero->add_option("--warmup", z->warmup, "steps not timed")->capture_default_str();
  zero->add_option("--seq-len", z->seq_len, "tokens per sequence")->capture_default_str();
  zero->add_option("--micro", z->micro, "train_micro_batch_size_per_gpu")->capture_default_str();
  zero->add_option("--reps", z->reps, "interleaved repetitions of the grid (medians are shown)")
      ->capture_default_str();
  zero->add_option("--threads", z->threads, "OpenMP threads per rank (default: cores / world size)");
  zero->add_option("--overlap-comm", z->overlap_comm, "zero_optimization.overlap_comm: default, true or false")
      ->capture_default_str();
  zero->add_option("--zero-extra", z->zero_extra,
                   "JSON object of more zero_optimization keys, e.g. '{\"stage3_max_reuse_distance\": 0}'");
  zero->add_option("--mpirun", z->mpirun, "mpirun to launch worlds above 1")->capture_default_str();
  zero->add_option("--child-timeout", z->child_timeout_s, "seconds allowed per run")->capture_default_str();
  zero->add_option("--json", z->json_out, "append the result as a JSON line");
  zero->callback([z] {
    ZeroBenchOptions opts = *z;
    opts.self_exe = self_exe();
    run_zero_bench(opts);
  });

  auto zo = std::make_shared<ZeroBenchOnceOptions>();
  CLI::App* zone = cmd->add_subcommand("zero-once", "one rank of a `bench zero` run (prints RESULT json)");
  zone->group("");  // hidden: started by `bench zero`
  zone->add_option("--model", zo->model);
  zone->add_option("--stage", zo->stage);
  zone->add_option("--steps", zo->steps);
  zone->add_option("--warmup", zo->warmup);
  zone->add_option("--seq-len", zo->seq_len);
  zone->add_option("--micro", zo->micro);
  zone->add_option("--threads", zo->threads);
  zone->add_option("--overlap-comm", zo->overlap_comm);
  zone->add_option("--zero-extra", zo->zero_extra);
  zone->add_option("--backend", zo->backend);
  zone->add_option("--seed", zo->seed);
  zone->callback([zo] {
    const ZeroBenchRankResult r = run_zero_bench_once(*zo);
    std::printf("RESULT %s\n", r.to_json().c_str());
    std::fflush(stdout);
  });

  auto d = std::make_shared<inference::DecodeBenchOptions>();
  CLI::App* dec = cmd->add_subcommand("decode", "single-stream greedy decode: deepspeed.cpp vs PyTorch, same weights");
  dec->add_option("--model", d->model, "checkpoint directory or safetensors file")->required();
  dec->add_option("--arch", d->arch, "model preset or JSON, for files without the model's shape");
  dec->add_option("--prompt-tokens", d->prompt_tokens)->capture_default_str();
  dec->add_option("--new-tokens", d->new_tokens)->capture_default_str();
  dec->add_option("--repeats", d->repeats)->capture_default_str();
  dec->add_option("--threads", d->threads, "threads for both")->capture_default_str();
  dec->add_option("--python", d->python, "Python with torch")->capture_default_str();
  dec->add_option("--torch-script", d->torch_script, "the PyTorch reference")->capture_default_str();
  dec->add_flag("--skip-torch", d->skip_torch, "measure only ours");
  dec->add_option("--device", d->device, "cpu, or cuda: ours and PyTorch's on the first GPU")->capture_default_str();
  dec->add_option("--weights", d->weights, "our weight format on the CPU: fp32 or bf16")->capture_default_str();
  dec->callback([d] { inference::run_decode_bench(*d); });

  auto sv = std::make_shared<serve::ServeBenchOptions>();
  CLI::App* srv = cmd->add_subcommand("serve", "serving policies side by side: throughput, latency and SLA goodput");
  srv->add_option("--model", sv->model, "checkpoint directory or safetensors file")->required();
  srv->add_option("--arch", sv->arch, "model preset or JSON, for files without the model's shape");
  srv->add_option("--policies", sv->policies, "comma-separated: splitfuse, prefill-first, static")
      ->delimiter(',')
      ->capture_default_str();
  srv->add_option("--clients", sv->clients, "concurrent clients, comma-separated")->delimiter(',')->capture_default_str();
  srv->add_option("--requests", sv->requests, "requests per policy and client count")->capture_default_str();
  srv->add_option("--prompt-mean", sv->prompt_mean, "mean prompt tokens (default 60% of the context)");
  srv->add_option("--gen-mean", sv->gen_mean, "mean generated tokens (default 8% of the context)");
  srv->add_option("--relative-std", sv->relative_std, "standard deviation over the mean")->capture_default_str();
  srv->add_option("--prompt-sla-fraction", sv->prompt_sla_fraction,
                  "prompt SLA: this fraction of the single-request prefill rate")->capture_default_str();
  srv->add_option("--gen-sla-fraction", sv->gen_sla_fraction,
                  "generation SLA: this fraction of the single-request decode rate")->capture_default_str();
  srv->add_option("--prompt-sla-rate", sv->prompt_sla_rate, "prompt SLA in tokens/s instead (FastGen: 512)");
  srv->add_option("--gen-sla-rate", sv->gen_sla_rate, "generation SLA in tokens/s instead (FastGen: 2, 4 or 6)");
  srv->add_option("--token-budget", sv->token_budget, "tokens per forward pass")->capture_default_str();
  srv->add_option("--kv-block-size", sv->kv_block_size)->capture_default_str();
  auto kv_memory = std::make_shared<std::string>("1GiB");
  srv->add_option("--kv-memory", *kv_memory, "KV-cache memory per server")->capture_default_str();
  srv->add_option("--static-batch", sv->static_batch_size, "requests per batch of the static policy")
      ->capture_default_str();
  srv->add_option("--threads", sv->threads, "engine threads (default: all cores)");
  srv->add_option("--device", sv->device, "where the engines run: cpu, cuda or cuda:N")->capture_default_str();
  srv->add_option("--weights", sv->weights, "weight format on the CPU: fp32 or bf16")->capture_default_str();
  srv->add_option("--kv-dtype", sv->kv_dtype, "KV cache elements on the CPU: fp32 or bf16")->capture_default_str();
  srv->add_option("--temperature", sv->temperature, "the requests' temperature (0: greedy)")->capture_default_str();
  srv->add_option("--top-p", sv->top_p, "the requests' top_p (with a temperature above 0)")->capture_default_str();
  srv->add_option("--seed", sv->seed)->capture_default_str();
  srv->add_option("--json", sv->json_out, "append one JSON line per cell");
  srv->callback([sv, kv_memory] {
    serve::ServeBenchOptions opts = *sv;
    opts.kv_memory_bytes = app::parse_byte_size(*kv_memory);
    serve::run_serve_bench(opts);
  });

  auto of = std::make_shared<OffloadBenchOptions>();
  auto limit = std::make_shared<std::string>("512MiB");
  CLI::App* off = cmd->add_subcommand(
      "offload", "ZeRO-Offload/Infinity: fio vs our swap, NVMe-swapped and memory-limited training vs resident, CPU "
                 "Adam vs torch.optim.AdamW");
  off->add_option("--dir", of->dir, "directory for the swap files and fio's file (on the NVMe drive)")
      ->capture_default_str();
  off->add_option("--model", of->model, "model preset or JSON")->capture_default_str();
  off->add_option("--steps", of->steps, "timed steps per training run")->capture_default_str();
  off->add_option("--warmup", of->warmup, "untimed steps first")->capture_default_str();
  off->add_option("--seq-len", of->seq_len)->capture_default_str();
  off->add_option("--micro", of->micro, "sequences per step")->capture_default_str();
  off->add_option("--threads", of->threads)->capture_default_str();
  off->add_option("--sub-group-size", of->sub_group_size, "elements per swapped tile")->capture_default_str();
  off->add_option("--device-memory-limit", *limit, "the memory-limited runs' device tier")->capture_default_str();
  off->add_option("--fio-mib", of->fio_mib, "MiB moved each way by the disk measurements")->capture_default_str();
  off->add_option("--adam-numel", of->adam_numel, "parameters of the Adam comparison")->capture_default_str();
  off->add_option("--python", of->python, "Python with torch")->capture_default_str();
  off->add_option("--torch-script", of->torch_script)->capture_default_str();
  off->add_flag("--skip-fio", of->skip_fio, "no disk measurements");
  off->add_flag("--skip-train", of->skip_train, "no NVMe-swapped training");
  off->add_flag("--skip-limit", of->skip_limit, "no memory-limited training");
  off->add_flag("--skip-adam", of->skip_adam, "no CPU Adam comparison");
  off->add_flag("--skip-torch", of->skip_torch, "no PyTorch");
  off->add_option("--json", of->json_out, "append the figures as one JSON line");
  off->callback([of, limit] {
    OffloadBenchOptions opts = *of;
    opts.device_limit = app::parse_byte_size(*limit);
    run_offload_bench(opts);
  });

  auto pb = std::make_shared<PipelineBenchOptions>();
  CLI::App* pipe = cmd->add_subcommand(
      "pipeline", "pipeline schedules (1F1B, ZB-H1): each stage's busy and idle time, the bubble vs its formula");
  pipe->add_option("--stages", pb->stages, "numbers of stages (processes), comma-separated")
      ->delimiter(',')
      ->expected(1, 16);
  pipe->add_option("--micro-batches", pb->micro_batches, "micro-batches per step, comma-separated")
      ->delimiter(',')
      ->expected(1, 16);
  pipe->add_option("--schedules", pb->schedules, "1f1b, zb-h1")->delimiter(',')->expected(1, 2);
  pipe->add_option("--pass-ms", pb->pass_ms, "length of each F, B and W pass")->capture_default_str();
  pipe->add_option("--steps", pb->steps, "steps per run")->capture_default_str();
  pipe->add_option("--warmup", pb->warmup, "steps not measured")->capture_default_str();
  pipe->add_option("--mpirun", pb->mpirun)->capture_default_str();
  pipe->add_option("--child-timeout", pb->child_timeout_s, "seconds allowed per run")->capture_default_str();
  pipe->add_option("--json", pb->json_out, "append the result as a JSON line");
  pipe->callback([pb] {
    PipelineBenchOptions opts = *pb;
    opts.self_exe = self_exe();
    run_pipeline_bench(opts);
  });

  auto mb = std::make_shared<MoeBenchOptions>();
  CLI::App* moe = cmd->add_subcommand(
      "moe", "MoE layer (top-1, top-2; capacity-based and dropless) against a dense MLP on the same tokens");
  moe->add_option("--tokens", mb->tokens, "tokens per pass")->capture_default_str()->check(CLI::Range(16, 1 << 16));
  moe->add_option("--width", mb->width, "model width C")->capture_default_str()->check(CLI::Range(8, 8192));
  moe->add_option("--experts", mb->experts, "experts")->capture_default_str()->check(CLI::Range(2, 256));
  moe->add_option("--repeats", mb->repeats, "interleaved rounds")->capture_default_str()->check(CLI::Range(1, 1000));
  moe->add_option("--threads", mb->threads, "OpenMP threads (0: default)")->capture_default_str();
  moe->add_option("--json", mb->json_out, "append the result as a JSON line");
  moe->callback([mb] { run_moe_bench(*mb); });

  auto cb = std::make_shared<CompressionBenchOptions>();
  CLI::App* comp = cmd->add_subcommand(
      "compression",
      "1-bit Adam, 0/1 Adam and ZeRO++ against their baselines on a throttled network (ranks as threads)");
  comp->add_option("--model", cb->model, "model preset or model JSON file")->capture_default_str();
  comp->add_option("--world", cb->world, "ranks")->capture_default_str()->check(CLI::Range(2, 64));
  comp->add_option("--node-size", cb->node_size, "ranks per node (ZeRO++'s hpZ group; not throttled within)")
      ->capture_default_str()->check(CLI::Range(1, 64));
  comp->add_option("--network", cb->network, "each rank's link: '<bandwidth>[,<latency>]', e.g. 1gbit,100us")
      ->capture_default_str();
  comp->add_option("--seq-len", cb->seq_len, "tokens per sequence")
      ->capture_default_str()->check(CLI::Range(1, 1 << 16));
  comp->add_option("--micro", cb->micro, "sequences per micro-batch")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  comp->add_option("--warmup", cb->warmup, "exact steps before the timed ones (freeze_step)")
      ->capture_default_str()->check(CLI::Range(1, 1000));
  comp->add_option("--steps", cb->steps, "timed steps")->capture_default_str()->check(CLI::Range(1, 1000));
  comp->add_option("--json", cb->json_out, "append the result as a JSON line");
  comp->callback([cb] { run_compression_bench(*cb); });

  auto po = std::make_shared<PipelineBenchOnceOptions>();
  CLI::App* pone = cmd->add_subcommand("pipeline-once", "one run of `bench pipeline` (prints RESULT json per rank)");
  pone->group("");  // hidden: started by `bench pipeline`
  pone->add_option("--schedule", po->schedule);
  pone->add_option("--micro-batches", po->micro_batches);
  pone->add_option("--pass-ms", po->pass_ms);
  pone->add_option("--steps", po->steps);
  pone->add_option("--warmup", po->warmup);
  pone->callback([po] {
    const std::string r = run_pipeline_bench_once(*po);
    std::printf("RESULT %s\n", r.c_str());
    std::fflush(stdout);
  });
}

}  // namespace ds::tool
