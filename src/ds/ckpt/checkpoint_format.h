// The checkpoint format: what a training run needs to resume exactly, at the same or another world size and ZeRO
// stage, and how to read it without the run (CheckpointReader: serving, consolidation). Writing and loading into a
// running engine are engine/checkpoint.h's.
// Note [Checkpoint layout]
//   DIR/latest                 the tag of the newest complete checkpoint (written last, atomically)
//   DIR/<tag>/manifest.json    step, samples, optimizer steps, model, ZeRO stage, the parallel layout (data-,
//                              tensor- and pipeline-parallel degrees), and one flat layout per model-parallel rank
//                              (tensor rank x pipeline stage): its units with offsets and padding, its parameters
//                              with their shapes, offsets and tensor-parallel split, and one entry per shard with
//                              its size and CRC-32; then the client state (the data position)
//   DIR/<tag>/rank_NNNNN.safetensors
//                              global rank N's partition of its layout: "fp32" (the parameters; in mixed precision
//                              the fp32 master weights), "exp_avg", "exp_avg_sq", each the rank's chunk of every unit
//                              in order (stage 0: the data-parallel rank 0 of each layout alone, everything). So a
//                              checkpoint loads at any precision too.
// A checkpoint is written into DIR/.<tag>.saving, every file atomically (temp, fsync, rename); rank 0 then writes
// the manifest, swaps the directory into place (renameat2 RENAME_EXCHANGE when the tag exists, so a complete
// checkpoint is always at DIR/<tag>) and updates `latest`. A run killed at any point leaves the previous
// checkpoint and `latest` as they were.
// Reading needs no knowledge of how it was written: a parameter's elements are found through the saved layouts in
// whichever shards hold them, and a tensor-parallel parameter is put together from its shares (core/tp_split.h),
// so a checkpoint loads at any data-, tensor- or pipeline-parallel degree and ZeRO stage, and consolidates into one
// file. (DeepSpeed needs its separate universal-checkpoint conversion for that.) Version 1 manifests, from before
// the parallel layout, hold one layout at the top level and are read as such.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ds/ckpt/safetensors.h"

namespace ds::ckpt {

struct CheckpointUnit {
  std::string name;
  int64_t offset = 0, numel = 0, padded_numel = 0;
};

struct CheckpointParam {
  std::string name;
  std::vector<int64_t> shape;  // as its layout holds it: a tensor-parallel share, or the whole parameter
  int64_t offset = 0;          // in its layout's flat buffers
  int split_dim = -1;          // the tensor-parallel split (core/tp_split.h); -1: the whole parameter
  int split_blocks = 1;
  std::vector<int64_t> full_shape;  // the whole parameter's shape (equal to shape when whole)
  int64_t numel() const;
  int64_t full_numel() const;
};

struct CheckpointShard {
  std::string file;  // relative to the tag directory
  int rank = 0;      // the global rank that wrote it
  int64_t partition_numel = 0;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};

// The flat layout of one model-parallel rank, and the shards of its data-parallel ranks (stage 0: one).
// An MoE model's experts have layouts of their own, one per expert-parallel rank (ep_rank >= 0), each with the
// shards of its expert-data-parallel ranks (world / ep of them; stage 0: one); their parameters are named by expert.
struct CheckpointLayout {
  int tp_rank = 0, pp_stage = 0;
  int ep_rank = -1;  // -1: a dense layout
  std::vector<CheckpointUnit> units;
  std::vector<CheckpointParam> params;
  std::vector<CheckpointShard> shards;  // by data-parallel rank
};

struct CheckpointManifest {
  static constexpr int kVersion = 2;
  std::string tag;
  int64_t global_steps = 0;     // optimizer steps taken (the LR schedule position)
  int64_t global_samples = 0;
  int64_t optimizer_steps = 0;  // Adam's step count (bias correction)
  nlohmann::json model;         // n_layer, n_head, n_embd, vocab_size, block_size
  int zero_stage = 0;
  int world = 1;                // data-parallel ranks (the partitions of each layout)
  int tp = 1, pp = 1;           // tensor-parallel ranks and pipeline stages: tp x pp layouts
  int ep = 1;                   // expert-parallel ranks: ep expert layouts, when the model has experts
  std::vector<CheckpointLayout> layouts;
  nlohmann::json config = nlohmann::json::object();        // the DeepSpeed config the run was given
  nlohmann::json engine_state = nlohmann::json::object();  // skipped steps, loss scaler, dtypes, seed
  nlohmann::json client_state = nlohmann::json::object();

  nlohmann::json to_json() const;
  // Throws IoError naming `where` for a missing field or a wrong type or version.
  static CheckpointManifest from_json(const nlohmann::json& j, const std::string& where);
};

// A layout in the manifest's form, as text, and back (ranks hand their layouts to the rank writing the manifest).
std::string checkpoint_layout_text(const CheckpointLayout& layout);
CheckpointLayout parse_checkpoint_layout(const std::string& text);

// The tensors of a shard.
inline constexpr const char* kCkptTensors[] = {"fp32", "exp_avg", "exp_avg_sq"};

// The shard file of a rank ("rank_00003.safetensors"), the CRC-32 the manifest records, a shape as "[2, 3]".
// A rank's shard file: its dense partition, or (experts) its experts' partition.
std::string checkpoint_shard_name(int rank, bool experts = false);
uint32_t checkpoint_crc32(const uint8_t* data, size_t n);
std::string checkpoint_shape_str(const std::vector<int64_t>& shape);

// DIR/<tag>, or DIR/<the tag in DIR/latest> when tag is empty; IoError when neither exists.
std::string checkpoint_tag_dir(const std::string& dir, const std::string& tag);

// Opens a checkpoint: the manifest and every shard (mapped), checking sizes and, with verify, CRC-32s. Errors
// name the file and the problem (missing, truncated, corrupt, from another layout). Parameters are handed out
// whole, whatever layout wrote them.
class CheckpointReader {
 public:
  CheckpointReader(const std::string& dir, const std::string& tag = "", bool verify = true);
  const CheckpointManifest& manifest() const { return manifest_; }
  const std::string& tag_dir() const { return tag_dir_; }
  // The model's parameters, whole (shape = full_shape, split_dim -1), in declaration order.
  const std::vector<CheckpointParam>& params() const { return params_; }
  // The parameter of this name; IoError listing close names when the checkpoint has none.
  const CheckpointParam& param(const std::string& name) const;
  // A whole parameter of params() from one tensor ("fp32", "exp_avg", "exp_avg_sq"), put together from its shares.
  std::vector<float> read_param(const CheckpointParam& p, const std::string& tensor) const;
  void read_param(const CheckpointParam& p, const std::string& tensor, float* out) const;  // full_numel() floats

 private:
  struct Layout {
    std::vector<SafetensorsFile> files;         // by data-parallel rank (stage 0: one)
    std::vector<int64_t> chunk, part_offset;    // per unit
  };
  // Elements [begin, begin + n) of layout l's flat buffers of one tensor.
  void read(size_t l, const std::string& tensor, int64_t begin, int64_t n, float* out) const;

  std::string tag_dir_;
  CheckpointManifest manifest_;
  std::vector<Layout> layouts_;
  std::vector<CheckpointParam> params_;
};

// Writes every parameter to one safetensors file with its Hugging Face name and shape, a parameter at a time
// (DeepSpeed's zero_to_fp32). dtype "fp32" or "bf16".
void consolidate_checkpoint(const CheckpointReader& reader, const std::string& out_path, const std::string& dtype);

}  // namespace ds::ckpt
