// Stub MPI backend for builds without MPI (CMake found no MPI, or DS_MPI=OFF): the same make_mpi_world, which
// throws a CommError saying how to get the real one. The environment helpers (mpi_env_rank and friends) need no
// MPI and live in comm_factory.cpp, so "auto" still notices a job launched by mpirun and refuses to run it as
// several unrelated worlds of one.
#include "ds/comm/mpi/mpi_comm.h"
#include "ds/core/error.h"

namespace ds::comm {

std::unique_ptr<Communicator> make_mpi_world() {
  DS_THROW(CommError,
           "[comm] this deepspeed.cpp was built without MPI; install libopenmpi-dev and rebuild, or use the local "
           "backend");
}

}  // namespace ds::comm
