// The checkpoint format: what a training run needs to resume exactly, at the same or another world size and ZeRO
// stage, and how to read it without the run (CheckpointReader: serving, consolidation). Writing and loading into a
// running engine are engine/checkpoint.h's.
// Note [Checkpoint layout]
//   DIR/latest                 the tag of the newest complete checkpoint (written last, atomically)
//   DIR/<tag>/manifest.json    step, samples, optimizer steps, model, ZeRO stage, world size, the flat layout
//                              (units with offsets and padding, parameters with shapes and offsets), one entry
//                              per shard with its size and CRC-32, and the client state (the data position)
//   DIR/<tag>/rank_NNNNN.safetensors
//                              rank N's partition: "fp32" (the parameters; in mixed precision the fp32 master
//                              weights), "exp_avg", "exp_avg_sq", each the rank's chunk of every unit in order
//                              (stage 0: rank 0 alone, everything). So a checkpoint loads at any precision too.
// A checkpoint is written into DIR/.<tag>.saving, every file atomically (temp, fsync, rename); rank 0 then writes
// the manifest, swaps the directory into place (renameat2 RENAME_EXCHANGE when the tag exists, so a complete
// checkpoint is always at DIR/<tag>) and updates `latest`. A run killed at any point leaves the previous
// checkpoint and `latest` as they were.
// Reading needs no knowledge of how it was written: a parameter's elements are found through the saved layout in
// whichever shards hold them, so a checkpoint loads at any world size and stage, and consolidates into one file.
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
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel() const;
};

struct CheckpointShard {
  std::string file;  // relative to the tag directory
  int rank = 0;
  int64_t partition_numel = 0;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};

struct CheckpointManifest {
  static constexpr int kVersion = 1;
  std::string tag;
  int64_t global_steps = 0;     // optimizer steps taken (the LR schedule position)
  int64_t global_samples = 0;
  int64_t optimizer_steps = 0;  // Adam's step count (bias correction)
  nlohmann::json model;         // n_layer, n_head, n_embd, vocab_size, block_size
  int zero_stage = 0;
  int world = 1;
  std::vector<CheckpointUnit> units;
  std::vector<CheckpointParam> params;
  std::vector<CheckpointShard> shards;
  nlohmann::json config = nlohmann::json::object();        // the DeepSpeed config the run was given
  nlohmann::json engine_state = nlohmann::json::object();  // skipped steps, loss scaler, dtypes, seed
  nlohmann::json client_state = nlohmann::json::object();

  nlohmann::json to_json() const;
  // Throws IoError naming `where` for a missing field or a wrong type or version.
  static CheckpointManifest from_json(const nlohmann::json& j, const std::string& where);
};

// The tensors of a shard.
inline constexpr const char* kCkptTensors[] = {"fp32", "exp_avg", "exp_avg_sq"};

// The shard file of a rank ("rank_00003.safetensors"), the CRC-32 the manifest records, a shape as "[2, 3]".
std::string checkpoint_shard_name(int rank);
uint32_t checkpoint_crc32(const uint8_t* data, size_t n);
std::string checkpoint_shape_str(const std::vector<int64_t>& shape);

// DIR/<tag>, or DIR/<the tag in DIR/latest> when tag is empty; IoError when neither exists.
std::string checkpoint_tag_dir(const std::string& dir, const std::string& tag);

// Opens a checkpoint: the manifest and every shard (mapped), checking sizes and, with verify, CRC-32s. Errors
// name the file and the problem (missing, truncated, corrupt, from another layout).
class CheckpointReader {
 public:
  CheckpointReader(const std::string& dir, const std::string& tag = "", bool verify = true);
  const CheckpointManifest& manifest() const { return manifest_; }
  const std::string& tag_dir() const { return tag_dir_; }
  // Elements [begin, begin + n) of the saved flat layout of one tensor ("fp32", "exp_avg", "exp_avg_sq").
  void read(const std::string& tensor, int64_t begin, int64_t n, float* out) const;
  std::vector<float> read_param(const CheckpointParam& p, const std::string& tensor) const;
  // The parameter of this name; IoError listing close names when the checkpoint has none.
  const CheckpointParam& param(const std::string& name) const;

 private:
  std::string tag_dir_;
  CheckpointManifest manifest_;
  std::vector<SafetensorsFile> files_;  // by rank (stage 0: one)
  std::vector<int64_t> chunk_, part_offset_;  // per unit, in the saved layout
};

// Writes every parameter to one safetensors file with its Hugging Face name and shape, a parameter at a time
// (DeepSpeed's zero_to_fp32). dtype "fp32" or "bf16".
void consolidate_checkpoint(const CheckpointReader& reader, const std::string& out_path, const std::string& dtype);

}  // namespace ds::ckpt
