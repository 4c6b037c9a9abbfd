// Checkpoints of a running engine (Note [Checkpoint layout] in ckpt/checkpoint_format.h): writing every rank's
// partition atomically, and loading one at this run's world size, stage and precision through the ZeRO optimizer.
#pragma once

#include <string>
#include <vector>

#include "ds/ckpt/checkpoint_format.h"

namespace ds::comm { class Topology; }
namespace ds::nn { class ParameterStore; }
namespace ds::zero { class ZeroOptimizer; }

namespace ds::engine {

// What one optimizer holds: the dense model (over the data-parallel group), or an MoE model's experts (over the
// expert-data-parallel group; their layouts are per expert-parallel rank).
struct CheckpointPart {
  const nn::ParameterStore* store = nullptr;
  zero::ZeroOptimizer* optimizer = nullptr;
  bool experts = false;
};

// Writes a checkpoint (a collective: every rank of the topology calls it with the same arguments). `meta` carries
// the scalar state, the model and the client state; the layouts, shards and checksums are filled in here.
void write_checkpoint(comm::Topology& topology, const std::string& dir, const std::string& tag,
                      const std::vector<CheckpointPart>& parts, ckpt::CheckpointManifest meta);

// Loads a checkpoint into the optimizer's parameters and moments (the moments and master weights through its
// optimizer-state store, a tile at a time), at this run's layout and stage, whatever layout wrote it: this rank's
// share of each whole parameter; checks that the model matches.
// Returns the manifest (for the steps and the client state).
// `model_params`: how many parameters the whole model has (a pipeline stage's or an expert-parallel rank's stores
// hold some of them; 0: all of the parts').
ckpt::CheckpointManifest load_checkpoint(const std::string& dir, const std::string& tag,
                                         const std::vector<CheckpointPart>& parts, size_t model_params = 0);

}  // namespace ds::engine
