// MPI backend (OpenMPI): one rank per process, launched by mpirun, srun or `dspeed launch`; without a launcher it
// runs as an MPI singleton (world of 1). One process-wide thread owns every MPI call, MPI_Init_thread and
// MPI_Finalize included, and runs collectives in issue order; see mpi_comm.cpp. This header does not include
// mpi.h, so any part may include it; the environment helpers need no MPI and exist in every build.
#pragma once

#include <memory>

#include "ds/comm/communicator.h"

namespace ds::comm {

// A communicator over all ranks of the job (a fresh duplicate of MPI_COMM_WORLD per call; collective, so every
// rank calls it in the same order). Initialises MPI on first use; MPI is finalised once, at process exit.
// Throws CommError when MPI cannot start, or in a build without MPI (comm/no_mpi.cpp).
std::unique_ptr<Communicator> make_mpi_world();

// The rank and world size an MPI launcher put in the environment (OMPI_COMM_WORLD_*, PMIX_RANK, PMI_*,
// MV2_COMM_WORLD_*, SLURM_PROCID/SLURM_STEP_NUM_TASKS), read without initialising MPI: -1 and 0 when absent.
// Defined in comm_factory.cpp (no MPI needed).
int mpi_env_rank();
int mpi_env_world();
// True when this process was started by an MPI launcher (mpirun, mpiexec, srun), even with -np 1.
bool launched_under_mpi();

}  // namespace ds::comm
