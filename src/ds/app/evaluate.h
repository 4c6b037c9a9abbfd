// The job behind `dspeed eval`: the mean loss (and perplexity) of a saved model over a token set, computed as the
// final validation of `dspeed train` computes it (the training forward, batches read in order), so that the two
// agree on an fp32 run of one process with the same data, sequence length and micro-batch. The weights are the
// saved fp32 ones: a mixed-precision run validated with its 16-bit copies, and a run of N ranks over N shards.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ds::app {

struct EvalOptions {
  std::string model_path;             // checkpoint directory (dspeed train --save) or .safetensors file
  std::string arch;                   // model preset or JSON, for files that do not record their shape
  std::string data = "data/tokens/sotu";  // a folder of token shards or one .bin shard
  std::string split = "val";          // with a folder: val.bin or train.bin
  std::optional<int64_t> batches;     // unset: all batches of the set
  int seq_len = 128;
  int micro_batch = 8;
  int threads = 0;                    // 0: all cores
};

struct EvalResult {
  double loss = 0;        // nats per token
  double perplexity = 0;  // exp(loss)
  int64_t batches = 0;
  int64_t tokens = 0;
  std::string model;      // the model's description
  std::string data_path;  // the shard read
};

EvalResult run_evaluation(const EvalOptions& options);

}  // namespace ds::app
