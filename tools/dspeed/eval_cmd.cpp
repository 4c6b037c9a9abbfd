// `dspeed eval`: parses arguments into EvalOptions and prints the loss and perplexity of a saved model.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "ds/app/evaluate.h"

namespace ds::tool {

void add_eval_command(CLI::App& root) {
  auto opts = std::make_shared<app::EvalOptions>();
  auto batches = std::make_shared<int64_t>(0);
  CLI::App* cmd = root.add_subcommand(
      "eval", "Validation loss and perplexity of a saved model over a token set (as dspeed train's final pass)");
  cmd->add_option("-m,--model", opts->model_path,
                  "checkpoint directory (dspeed train --save) or .safetensors file (dspeed ckpt consolidate)")
      ->required();
  cmd->add_option("--arch", opts->arch, "model preset or JSON, for files that do not record their shape");
  cmd->add_option("--data", opts->data, "folder of token shards (train.bin, val.bin) or one .bin shard")
      ->capture_default_str();
  cmd->add_option("--split", opts->split, "with a folder: val or train")->capture_default_str();
  auto* batches_opt = cmd->add_option("--batches", *batches, "evaluate the first N batches (default: all)");
  cmd->add_option("--seq-len", opts->seq_len, "tokens per sequence (as in training)")->capture_default_str();
  cmd->add_option("--micro-batch", opts->micro_batch, "sequences per batch (as in training)")->capture_default_str();
  cmd->add_option("--threads", opts->threads, "CPU threads (default: all cores)");
  cmd->callback([opts, batches, batches_opt] {
    app::EvalOptions o = *opts;
    if (batches_opt->count() > 0) o.batches = *batches;
    const app::EvalResult r = app::run_evaluation(o);
    std::fprintf(stderr, "model   %s\ndata    %s: %lld batches of %d x %d tokens\n", r.model.c_str(),
                 r.data_path.c_str(), static_cast<long long>(r.batches), o.micro_batch, o.seq_len);
    fmt::print("validation loss {:.4f} nats/token, perplexity {:.2f} ({} tokens)\n", r.loss, r.perplexity,
               r.tokens);
  });
}

}  // namespace ds::tool
