// World-communicator factory and the MPI launcher environment probes (no MPI calls, so they exist in every
// build). Launchers are recognised by the variables they set for each rank: OpenMPI's mpirun
// (OMPI_COMM_WORLD_*), PMIx launchers (PMIX_RANK), MPICH/Hydra (PMI_RANK/PMI_SIZE), MVAPICH (MV2_*) and Slurm's
// srun (SLURM_PROCID with SLURM_STEP_NUM_TASKS; a batch script has SLURM_PROCID but no step, so it is no launch).
#include "ds/comm/comm_factory.h"

#include <cstdlib>
#include <initializer_list>
#include <string_view>

#include "ds/comm/mpi/mpi_comm.h"
#include "ds/core/error.h"

namespace ds::comm {
namespace {

// The integer value of the first variable in `names` that is set to one; -1 if none is.
int first_env_int(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    char* end = nullptr;
    const long v = std::strtol(value, &end, 10);
    if (*end == '\0' && v >= 0 && v < (1L << 30)) return static_cast<int>(v);
  }
  return -1;
}

bool slurm_step() { return std::getenv("SLURM_STEP_NUM_TASKS") != nullptr; }

}  // namespace

int mpi_env_rank() {
  const int r = first_env_int({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"});
  if (r >= 0) return r;
  return slurm_step() ? first_env_int({"SLURM_PROCID"}) : -1;
}

int mpi_env_world() {
  const int w = first_env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"});
  if (w > 0) return w;
  if (slurm_step()) {
    const int s = first_env_int({"SLURM_STEP_NUM_TASKS"});
    if (s > 0) return s;
  }
  // PMIx alone gives a rank but no size in the environment: a launch of unknown size.
  return 0;
}

bool launched_under_mpi() { return mpi_env_rank() >= 0; }

std::unique_ptr<Communicator> make_world_communicator(const std::string& backend) {
  if (backend == "self") return make_self_communicator();
  if (backend == "mpi") return make_mpi_world();
  if (backend == "auto") {
    if (!launched_under_mpi()) return make_self_communicator();
    // Under a launcher: MPI, or (built without MPI) the clear "built without MPI" error rather than N worlds.
#ifndef DS_WITH_MPI
    if (mpi_env_world() == 1) return make_self_communicator();  // `mpirun -np 1` needs no MPI
#endif
    return make_mpi_world();
  }
  DS_THROW(ConfigError,
           "[comm] unknown communication backend '{}'; expected one of: auto, mpi, self (the local thread backend "
           "is started with run_local_world)",
           backend);
}

}  // namespace ds::comm
