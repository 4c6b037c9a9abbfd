// `dspeed ckpt inspect DIR` and `dspeed ckpt consolidate DIR OUT.safetensors`: checkpoints without training.
#include <CLI/CLI.hpp>
#include <fmt/ranges.h>

#include <cmath>

#include <algorithm>

#include "commands.h"
#include "ds/core/memory.h"
#include "ds/ckpt/checkpoint_format.h"

namespace ds::tool {

namespace {

void inspect(const std::string& dir, const std::string& tag) {
  const ckpt::CheckpointReader reader(dir, tag);  // verifies sizes and checksums
  const ckpt::CheckpointManifest& m = reader.manifest();
  fmt::print("checkpoint {}\n", reader.tag_dir());
  fmt::print("  step {} ({} samples), Adam step {}\n", m.global_steps, m.global_samples, m.optimizer_steps);
  const auto expert_layouts =
      std::count_if(m.layouts.begin(), m.layouts.end(), [](const ckpt::CheckpointLayout& l) { return l.ep_rank >= 0; });
  fmt::print("  layout: ZeRO stage {}, {} data-parallel x {} tensor-parallel x {} pipeline rank(s){}, {} flat "
             "layout(s) of {} gather units{}\n", m.zero_stage, m.world, m.tp, m.pp,
             expert_layouts ? fmt::format(", experts over {} expert-parallel rank(s)", m.ep) : "",
             m.layouts.size() - static_cast<size_t>(expert_layouts), m.layouts.front().units.size(),
             expert_layouts ? fmt::format(" and {} expert layout(s)", expert_layouts) : "");
  fmt::print("  model: {}\n", m.model.dump());
  int64_t numel = 0;
  for (const ckpt::CheckpointParam& p : reader.params()) numel += p.numel();
  fmt::print("  {} parameters, {} elements ({} per tensor in fp32)\n", reader.params().size(), numel,
             format_bytes(numel * 4));
  for (const ckpt::CheckpointParam& p : reader.params()) {
    const std::vector<float> v = reader.read_param(p, "fp32");
    double sq = 0;
    for (float x : v) sq += double(x) * x;
    fmt::print("    {:<45} [{}]  rms {:.6f}\n", p.name, fmt::join(p.shape, ", "),
               v.empty() ? 0.0 : std::sqrt(sq / static_cast<double>(v.size())));
  }
  for (const ckpt::CheckpointLayout& l : m.layouts)
    for (const ckpt::CheckpointShard& s : l.shards)
      fmt::print("  shard {}: rank {} (tensor rank {}, stage {}), {} elements, {}, crc32 {:08x} (verified)\n", s.file,
                 s.rank, l.tp_rank, l.pp_stage, s.partition_numel, format_bytes(s.bytes), s.crc32);
  if (!m.client_state.empty()) fmt::print("  client state: {}\n", m.client_state.dump());
}

}  // namespace

void add_ckpt_command(CLI::App& root) {
  CLI::App* ckpt = root.add_subcommand("ckpt", "Inspect checkpoints and consolidate them into one model file");
  ckpt->require_subcommand(1, 1);

  auto dir = std::make_shared<std::string>();
  auto tag = std::make_shared<std::string>();
  CLI::App* ins = ckpt->add_subcommand("inspect", "Print what a checkpoint holds and verify its checksums");
  ins->add_option("dir", *dir, "the folder given to --save")->required();
  ins->add_option("--tag", *tag, "a tag (default: the one in DIR/latest)");
  ins->callback([dir, tag] { inspect(*dir, *tag); });

  auto cdir = std::make_shared<std::string>();
  auto ctag = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("fp32");
  CLI::App* con = ckpt->add_subcommand(
      "consolidate", "Write every parameter to one .safetensors file with Hugging Face GPT-2 names, from any stage "
                     "and world size (DeepSpeed's zero_to_fp32)");
  con->add_option("dir", *cdir, "the folder given to --save")->required();
  con->add_option("out", *out, "output .safetensors file")->required();
  con->add_option("--tag", *ctag, "a tag (default: the one in DIR/latest)");
  con->add_option("--dtype", *dtype, "fp32 or bf16")->capture_default_str();
  con->callback([cdir, ctag, out, dtype] {
    const ckpt::CheckpointReader reader(*cdir, *ctag);
    ckpt::consolidate_checkpoint(reader, *out, *dtype);
    fmt::print("wrote {} ({} parameters, {}) from {}\n", *out, reader.params().size(), *dtype,
               reader.tag_dir());
  });
}

}  // namespace ds::tool
