// Topology: the 3D layout of a job (DESIGN decision 8). Global ranks map to (pipe, data, model) coordinates in
// DeepSpeed's PipeModelDataParallelTopology order: axes [pipe, data, model], row-major, so the model (tensor-
// parallel) axis varies fastest and its ranks sit next to each other (the same node), then data, then pipe.
// Each rank gets the communicators of its groups: data (ZeRO and gradient averaging: same pipe and model
// coordinates), model (tensor parallelism: same pipe and data), pipe (the stages of one replica: same data and
// model) and model-parallel (every rank of one replica: same data coordinate; the gradient norm sums over it).
// Mixture of Experts splits the data axis once more (DeepSpeed's _create_expert_and_data_parallel): consecutive
// data ranks in groups of `expert` share one set of experts (expert-parallel: the all-to-all), and the ranks
// holding the same experts form the expert-data-parallel group (the experts' gradients are reduced over it).
// For data 4 and expert 2: expert groups {0,1} {2,3}, expert-data groups {0,2} {1,3}.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::comm {

struct Coords {
  int pipe = 0, data = 0, model = 0;
  bool operator==(const Coords&) const = default;
};

// The arithmetic of a layout, without communicators.
struct TopologyShape {
  int pipe = 1, data = 1, model = 1;
  int expert = 1;  // the expert-parallel size, a divisor of data
  int world() const { return pipe * data * model; }
  Coords coords_of(int rank) const;
  int rank_of(const Coords& c) const;
  // "pp 2 × tp 2 × dp 2"
  std::string str() const;
};

class Topology {
 public:
  // Collective over `world` (every rank calls it): builds the groups by Communicator::split. `world` must outlive
  // the topology.
  Topology(Communicator& world, const TopologyShape& shape);

  const TopologyShape& shape() const { return shape_; }
  const Coords& coords() const { return coords_; }
  Communicator& world() { return world_; }
  Communicator& data() { return *data_; }
  Communicator& model() { return *model_; }
  Communicator& pipe() { return *pipe_; }
  Communicator& model_parallel() { return *model_parallel_; }
  Communicator& expert() { return *expert_; }
  Communicator& expert_data() { return *expert_data_; }
  // This rank's traffic over the world and all its groups, each collective once (Note [Traffic accounting]).
  CommStats stats() const;

 private:
  // A group of the world: the world itself when it holds every rank, a communicator of one when it holds only
  // this rank, else a split (every rank takes the same branch, so the splits stay collective).
  Communicator* group(int size, int color, int key);

  Communicator& world_;
  TopologyShape shape_;
  Coords coords_;
  std::vector<std::unique_ptr<Communicator>> owned_;
  Communicator *data_, *model_, *pipe_, *model_parallel_, *expert_, *expert_data_;
};

}  // namespace ds::comm
