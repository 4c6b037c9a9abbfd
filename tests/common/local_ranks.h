// Runs one function on every rank of a local (thread) world and collects what each rank returns. Each rank gets its
// own MemoryTracker, which outlives the rank's thread (the communicator's buffers report to it until the world is
// gone), and its share of the cores (ranks are threads).
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "ds/comm/local/local_comm.h"
#include "ds/core/memory.h"

namespace ds::testing {

template <typename R, typename F>
std::vector<R> on_local_ranks(int world, F&& fn) {
  std::vector<R> out(static_cast<size_t>(world));
  std::vector<MemoryTracker> trackers(static_cast<size_t>(world));
  comm::run_local_world(world, [&](comm::Communicator& comm) {
    const size_t r = static_cast<size_t>(comm.rank());
    omp_set_num_threads(std::max(1, omp_get_num_procs() / comm.size()));
    TrackerScope scope(trackers[r]);
    out[r] = fn(comm);
  });
  return out;
}

}  // namespace ds::testing
