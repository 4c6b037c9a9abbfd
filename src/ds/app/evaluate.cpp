// `dspeed eval` (see evaluate.h). The weights come through inference's WeightSource (checkpoint or safetensors,
// shape from the file's metadata), in spec order, into an Engine built with a minimal fp32 config; the loss is the
// Engine's eval_loss, the very function the trainer's validation calls.
#include "ds/app/evaluate.h"

#include <omp.h>

#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "ds/core/error.h"
#include "ds/data/data_loader.h"
#include "ds/engine/engine.h"
#include "ds/inference/weight_source.h"

namespace ds::app {

namespace fs = std::filesystem;

EvalResult run_evaluation(const EvalOptions& o) {
  DS_CHECK_AS(ConfigError, o.micro_batch > 0 && o.seq_len > 0 && o.batches.value_or(1) > 0,
              "[eval] need --micro-batch > 0, --seq-len > 0 and --batches > 0 (got {}, {}, {})", o.micro_batch,
              o.seq_len, o.batches.value_or(1));
  DS_CHECK_AS(ConfigError, o.split == "val" || o.split == "train",
              "[eval] --split must be 'val' or 'train'; found '{}'", o.split);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  std::string shard = o.data;
  if (fs::is_directory(o.data)) shard = (fs::path(o.data) / (o.split + ".bin")).string();
  DS_CHECK_AS(IoError, fs::is_regular_file(shard),
              "[eval] no token shard at '{}'; --data takes a folder of shards (train.bin, val.bin, as `dspeed data "
              "prepare` writes) or one .bin shard", shard);

  DS_CHECK_AS(IoError, fs::exists(o.model_path),
              "[eval] model '{}' does not exist; give a checkpoint directory (dspeed train --save) or a .safetensors "
              "file (dspeed ckpt consolidate)", o.model_path);
  const auto source = inference::open_weight_source(o.model_path, o.arch);
  const nn::Gpt2Config& model_config = source->config();
  DS_CHECK_AS(ConfigError, o.seq_len <= model_config.block_size,
              "[eval] --seq-len {} is longer than the model's block_size {}; give at most {}", o.seq_len,
              model_config.block_size, model_config.block_size);
  const config::DeepSpeedConfig config = config::parse_config(
      fmt::format(R"({{"train_micro_batch_size_per_gpu": {}}})", o.micro_batch), 1, "dspeed eval");
  engine::Engine engine(model_config, config, o.seq_len);
  std::vector<float> values;
  for (const nn::Gpt2Weight& w : model_config.weight_spec()) {  // an MoE model's experts have their own store
    const bool expert = w.expert >= 0;
    const nn::Parameter& p = (expert ? engine.model().expert_params() : engine.model().params()).get(w.name);
    values.resize(static_cast<size_t>(p.numel()));
    source->read(w, values.data());
    (expert ? *engine.expert_optimizer() : engine.optimizer()).set_parameters(p.offset, values.data(), p.numel());
  }

  data::DataLoader loader({shard}, o.micro_batch, o.seq_len, 0, 1, 0, /*shuffle=*/false);
  DS_CHECK_AS(ConfigError, loader.num_batches() > 0,
              "[eval] '{}' holds {} tokens, fewer than one batch of {} x {}; lower --micro-batch or --seq-len", shard,
              loader.num_tokens(), o.micro_batch, o.seq_len);
  EvalResult r;
  r.batches = o.batches ? std::min(*o.batches, loader.num_batches()) : loader.num_batches();
  r.tokens = r.batches * o.micro_batch * o.seq_len;
  r.loss = engine.eval_loss([&](int32_t* in, int32_t* tg) { loader.next_batch(in, tg); }, r.batches,
                            o.micro_batch);
  r.perplexity = std::exp(r.loss);
  r.model = model_config.str();
  r.data_path = shard;
  return r;
}

}  // namespace ds::app
