// The 3D topology: rank <-> coordinates and the group communicators (topology.h).
#include "ds/comm/topology.h"

#include <fmt/format.h>

#include "ds/core/error.h"

namespace ds::comm {

Coords TopologyShape::coords_of(int rank) const {
  DS_ASSERT(rank >= 0 && rank < world(), "rank {} outside a world of {}", rank, world());
  return Coords{rank / (data * model), (rank / model) % data, rank % model};
}

int TopologyShape::rank_of(const Coords& c) const {
  DS_ASSERT(c.pipe >= 0 && c.pipe < pipe && c.data >= 0 && c.data < data && c.model >= 0 && c.model < model,
            "coordinates (pipe {}, data {}, model {}) outside {}", c.pipe, c.data, c.model, str());
  return (c.pipe * data + c.data) * model + c.model;
}

std::string TopologyShape::str() const {
  return fmt::format("pp {} × tp {} × dp {}{}", pipe, model, data, expert > 1 ? fmt::format(" (ep {})", expert) : "");
}

Topology::Topology(Communicator& world, const TopologyShape& shape) : world_(world), shape_(shape) {
  DS_CHECK_AS(ConfigError, world.size() == shape.world(), "[topology] the layout {} needs {} ranks but the job has {}",
              shape.str(), shape.world(), world.size());
  DS_CHECK_AS(ConfigError, shape.expert >= 1 && shape.data % shape.expert == 0, "[topology] the expert-parallel size "
              "{} must divide the data-parallel size {} (DeepSpeed asserts the same); choose an ep_size that divides "
              "{}", shape.expert, shape.data, shape.data);
  coords_ = shape.coords_of(world.rank());
  const Coords& c = coords_;
  data_ = group(shape.data, c.pipe * shape.model + c.model, c.data);
  model_ = group(shape.model, c.pipe * shape.data + c.data, c.model);
  pipe_ = group(shape.pipe, c.data * shape.model + c.model, c.pipe);
  model_parallel_ = shape.pipe == 1 ? model_ : group(shape.pipe * shape.model, c.data, c.pipe * shape.model + c.model);
  const int ep = shape.expert, replicas = shape.data / ep, rest = c.pipe * shape.model + c.model;
  expert_ = ep == shape.data ? data_ : group(ep, rest * replicas + c.data / ep, c.data % ep);
  expert_data_ = ep == 1 ? data_ : group(replicas, rest * ep + c.data % ep, c.data / ep);
}

Communicator* Topology::group(int size, int color, int key) {
  if (size == world_.size()) return &world_;
  owned_.push_back(size == 1 ? make_self_communicator() : world_.split(color, key));
  return owned_.back().get();
}

CommStats Topology::stats() const {
  CommStats total = world_.stats();
  for (const auto& g : owned_)
    for (int k = 0; k < kCollectiveCount; ++k) {
      total.calls[k] += g->stats().calls[k];
      total.bytes[k] += g->stats().bytes[k];
      total.payload[k] += g->stats().payload[k];
    }
  return total;
}

}  // namespace ds::comm
