// `dspeed train`: parses arguments into TrainOptions and runs the training job.
#include <CLI/CLI.hpp>

#include <memory>
#include <vector>

#include "commands.h"
#include "ds/app/trainer.h"
#include "ds/config/config.h"

namespace ds::tool {

void add_train_command(CLI::App& root) {
  auto opts = std::make_shared<app::TrainOptions>();
  auto memory_limit = std::make_shared<std::string>();
  auto host_limit = std::make_shared<std::string>();
  auto steps = std::make_shared<int64_t>(0);
  auto eval_batches = std::make_shared<int64_t>(16);
  config::AutoValues& a = opts->autos;
  CLI::App* cmd = root.add_subcommand(
      "train", "Train a GPT-2 model from a DeepSpeed config (with no options: gpt2-tiny on the bundled corpus)");
  cmd->add_option("-c,--config", opts->config_path, "DeepSpeed ds_config.json (default: built-in config)");
  // The values a config may leave "auto", as Hugging Face's Trainer fills them (a config value that differs from a
  // flag given here is an error).
  struct AutoFlag {
    CLI::Option* option;
    bool* given;
  };
  auto flags = std::make_shared<std::vector<AutoFlag>>();
  auto auto_flag = [&](const char* name, auto& value, const char* help) {
    flags->push_back({cmd->add_option(name, value.value, help)->capture_default_str()->group("Values for \"auto\""),
                      &value.given});
  };
  auto_flag("--micro-batch", a.micro_batch, "train_micro_batch_size_per_gpu");
  flags->back().option->check(CLI::PositiveNumber);
  auto_flag("--grad-accum", a.grad_accum, "gradient_accumulation_steps");
  flags->back().option->check(CLI::PositiveNumber);
  auto_flag("--lr", a.lr, "optimizer.params.lr and the scheduler's warmup_max_lr");
  auto_flag("--weight-decay", a.weight_decay, "optimizer.params.weight_decay");
  auto_flag("--max-grad-norm", a.max_grad_norm, "gradient_clipping");
  flags->push_back({cmd->add_option("--warmup-steps", a.warmup_steps.value,
                                    "scheduler.params.warmup_num_steps (default: 5% of total_num_steps)")
                         ->check(CLI::NonNegativeNumber)
                         ->group("Values for \"auto\""),
                     &a.warmup_steps.given});
  auto_flag("--precision", a.precision, "fp32, fp16 or bf16: fp16.enabled and bf16.enabled");
  flags->back().option->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  cmd->add_option("-m,--model", opts->model, "model preset (gpt2-tiny, gpt2-mini, gpt2, gpt2-medium, gpt2-large, gpt2-xl) or model JSON file")
      ->capture_default_str();
  auto* data = cmd->add_option("--data", opts->data_dir,
                               "folder with train.bin and val.bin token shards (the default is prepared from the "
                               "bundled corpus on first use)")
                   ->capture_default_str();
  cmd->add_option("--corpus", opts->corpus_dir,
                  "text corpus to prepare the default --data from when it is missing (a --data given must exist)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", opts->tokenizer_dir, "folder with encoder.json and vocab.bpe")
      ->capture_default_str();
  cmd->add_option("--val-pattern", opts->val_pattern, "regex on file names that selects validation documents")
      ->capture_default_str();
  cmd->add_option("--seq-len", opts->seq_len, "tokens per sequence")->capture_default_str();
  auto* steps_opt = cmd->add_option("--steps", *steps,
                                    "the run's last step (default: the scheduler's total_num_steps, else 1000); also "
                                    "total_num_steps where the config leaves it \"auto\"");
  cmd->add_option("--eval-interval", opts->eval_interval, "steps between validation passes")->capture_default_str();
  auto* eval_opt = cmd->add_option("--eval-batches", *eval_batches,
                                   "batches per validation pass (default: 16, and all for the final pass)");
  cmd->add_option("--out", opts->out_dir, "folder for metrics.csv and loss.svg")->capture_default_str();
  cmd->add_option("--seed", opts->seed, "seed for initialisation and data order")->capture_default_str();
  cmd->add_option("--threads", opts->threads, "CPU threads (default: all cores)");
  cmd->add_option("--time-limit", opts->time_limit_s, "stop training after this many seconds");
  cmd->add_option("--device-memory-limit", *memory_limit,
                  "fail clearly if the model needs more than this (e.g. 512MiB), as on a smaller accelerator");
  cmd->add_option("--host-memory-limit", *host_limit,
                  "fail clearly if what is offloaded to host memory (offload_optimizer/offload_param 'cpu', swap "
                  "buffers) needs more than this (e.g. 4GiB)");
  cmd->add_flag("-q,--quiet", opts->quiet,
                "no progress bar and no summary (warnings, errors and the ZeRO report remain)");
  cmd->add_flag("--checkpoint-activations", opts->checkpoint_activations,
                "keep only each transformer block's input and recompute its forward in backward (less memory, "
                "about a third more compute); configured by the config's activation_checkpointing block");
  cmd->add_option("--backend", opts->backend,
                  "communicator: auto (MPI when started by mpirun/srun/dspeed launch), mpi, self")
      ->capture_default_str();
  auto tp_size = std::make_shared<int>(1);
  auto* tp_opt = cmd->add_option("--tensor-parallel-size", *tp_size,
                                 "ranks each layer is split across (Megatron tensor parallelism; the config's "
                                 "tensor_parallel.autotp_size); the world size must be a multiple of it");
  auto pp_size = std::make_shared<int>(1);
  auto* pp_opt = cmd->add_option("--pipe-parallel-size", *pp_size,
                                 "pipeline stages the layers are split into (the config's pipeline.stages; "
                                 "partitioned by pipeline.partition); the world size must be a multiple of "
                                 "stages x tensor-parallel size");
  auto ep_size = std::make_shared<int>(1);
  auto* ep_opt = cmd->add_option("--expert-parallel-size", *ep_size,
                                 "ranks one set of experts is spread over (an MoE model's moe.ep_size, DeepSpeed's "
                                 "MoE ep_size); must divide the data-parallel size and every MoE block's experts");
  cmd->add_option("--pipe-schedule", opts->pipe_schedule,
                  "pipeline schedule: 1f1b (DeepSpeed's) or zb-h1 (zero bubble: backward split into input- and "
                  "weight-gradient passes); default the config's pipeline.schedule, else 1f1b")
      ->check(CLI::IsMember({"1f1b", "zb-h1"}));
  cmd->add_option("--save", opts->save_dir, "save checkpoints in this folder (DIR/<tag>, DIR/latest)");
  cmd->add_option("--save-interval", opts->save_interval, "steps between checkpoints (default: only at the end)");
  cmd->add_option("--load", opts->load_dir, "resume from the latest checkpoint in this folder");
  cmd->add_option("--load-tag", opts->load_tag, "resume from this tag instead of the latest");
  cmd->add_option("--init-from", opts->init_from,
                  "start from the weights of a .safetensors file (Hugging Face GPT-2 names, as consolidate writes)");
  cmd->callback([opts, memory_limit, host_limit, flags, data, steps, steps_opt, eval_batches, eval_opt, tp_size,
                 tp_opt, pp_size, pp_opt, ep_size, ep_opt] {
    for (const AutoFlag& f : *flags) *f.given = f.option->count() > 0;
    app::TrainOptions o = *opts;
    o.data_given = data->count() > 0;
    if (steps_opt->count() > 0) o.steps = *steps;
    if (eval_opt->count() > 0) o.eval_batches = *eval_batches;
    if (tp_opt->count() > 0) o.tensor_parallel_size = *tp_size;
    if (pp_opt->count() > 0) o.pipe_parallel_size = *pp_size;
    if (ep_opt->count() > 0) o.expert_parallel_size = *ep_size;
    if (!memory_limit->empty()) o.device_memory_limit = app::parse_byte_size(*memory_limit);
    if (!host_limit->empty()) o.host_memory_limit = app::parse_byte_size(*host_limit);
    app::run_training(o);
  });
}

}  // namespace ds::tool
