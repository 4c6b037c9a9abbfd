// Choosing the world communicator by backend name ("auto", "mpi", "self"), as `dspeed` and the engine do.
// "auto" takes MPI exactly when an MPI launcher started this process (read from the environment, before MPI is
// initialised), so a plain run never pays for MPI start-up and an mpirun job never splits into worlds of one.
#pragma once

#include <memory>
#include <string>

#include "ds/comm/communicator.h"

namespace ds::comm {

// backend: "auto" (MPI when launched by mpirun/mpiexec/srun, else self), "mpi" (MPI, a singleton world of 1
// without a launcher) or "self" (one rank, no MPI). The local (threads) backend needs one communicator per
// thread: use make_local_world / run_local_world. Unknown names throw ConfigError listing the choices.
std::unique_ptr<Communicator> make_world_communicator(const std::string& backend);

}  // namespace ds::comm
