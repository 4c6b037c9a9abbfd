// The training job behind `dspeed train`: resolves data (preparing token shards from the bundled corpus when
// they are missing), builds model, config and engine, runs the loop with a progress bar, periodic validation,
// a metrics CSV, the config's monitors (tensorboard, csv_monitor), a loss chart and a closing summary. The
// command-line tool only fills TrainOptions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ds/config/config.h"

namespace ds::app {

struct TrainOptions {
  std::string config_path;                 // ds_config.json; empty = the built-in default config
  config::AutoValues autos;                // fill the config's "auto" values (--micro-batch, --lr, ...)
  std::string model = "gpt2-tiny";         // preset name or model JSON file
  std::string data_dir = "data/tokens/sotu";     // holds train.bin and val.bin
  bool data_given = false;                 // --data was given: its shards must exist (no preparing into it)
  std::string corpus_dir = "data/corpus/sotu";   // used to prepare data_dir when it is missing
  std::string tokenizer_dir = "data/tokenizer/gpt2";
  std::string val_pattern = "^20(1[0-9]|2[01])_";  // held-out documents when preparing (SOTU 2010-2021)
  std::string out_dir = "runs/latest";     // metrics.csv goes here
  int seq_len = 128;
  std::optional<int64_t> steps;            // the run's last step; unset: the scheduler's total_num_steps, else 1000
  int64_t eval_interval = 200;             // steps between validation passes (0: only at the end)
  std::optional<int64_t> eval_batches;     // batches per validation pass; unset: 16, and all for the final pass
  uint64_t seed = 1234;
  int threads = 0;                         // 0: all cores
  double time_limit_s = 0;                 // stop after this many seconds of training (0: no limit)
  std::optional<int64_t> device_memory_limit;  // bytes
  std::optional<int64_t> host_memory_limit;    // bytes: the host tier (offloaded state, swap buffers)
  bool quiet = false;                      // no progress bar or summary (warnings, errors, the ZeRO report)
  std::optional<int> tensor_parallel_size;  // --tensor-parallel-size (else the config's tensor_parallel.autotp_size)
  std::optional<int> pipe_parallel_size;    // --pipe-parallel-size (else the config's pipeline.stages)
  std::optional<int> expert_parallel_size;  // --expert-parallel-size (else the model's moe.ep_size)
  std::string pipe_schedule;                // --pipe-schedule (else the config's pipeline.schedule)
  std::string backend = "auto";            // communicator: auto (MPI when launched by mpirun/srun), mpi, self
  std::string save_dir;                    // checkpoints go here (Note [Checkpoint layout]); empty: none
  int64_t save_interval = 0;               // steps between checkpoints (0: only at the end)
  std::string load_dir;                    // resume from the checkpoint in DIR/latest (or load_tag)
  std::string load_tag;
  std::string init_from;                   // start from these weights (a consolidated .safetensors file)
  bool checkpoint_activations = false;     // checkpoint every transformer block (recompute in backward)
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  double tokens_per_s = 0;
  double final_train_loss = 0;  // mean of the last 20 steps
  double initial_val_loss = 0;
  double final_val_loss = 0;    // over the final pass's batches (all of them unless --eval-batches)
  int64_t final_val_batches = 0;
  std::string metrics_path;
  std::string chart_path;       // loss.svg beside metrics.csv
};

// Every rank of the job calls this; rank 0 prints, writes the metrics and the per-rank ZeRO report.
TrainSummary run_training(const TrainOptions& options);

// The config used when none is given: AdamW with WarmupCosineLR (linear warmup, cosine down to 0.1 x lr), the
// values left "auto" so that the flags set them; with AutoValues' defaults (micro-batch 8, lr 2e-3, betas
// 0.9/0.95, weight decay 0.1, 50 warmup steps of 1000, clipping 1.0) it equals examples/ds_config_gpt2_tiny.json
// (a test keeps the two equal).
extern const char* const kDefaultTrainConfig;

// "2GiB", "512MiB", "1e9" -> bytes
int64_t parse_byte_size(const std::string& text);

}  // namespace ds::app
