// Local backend: ranks are threads of one process sharing memory (fast deterministic tests, single-machine runs).
// Collectives rendezvous through a shared group state and reduce in a fixed order (rank 0 + rank 1 + ... ), so
// results are bitwise identical whatever the thread timing. Async forms run on one FIFO worker thread per
// communicator (completion in issue order, like an NCCL stream); send/recv are matched at once, outside that FIFO,
// as MPI_Isend/Irecv are. See local_comm.cpp for the rendezvous protocol.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::comm {

struct LocalWorldOptions {
  // > 0: a collective or point-to-point wait stuck this long throws CommError naming the operation and the ranks
  // that never arrived, and aborts the world so no other rank hangs. 0: wait forever (the default).
  double timeout_s = 0;
};

// One communicator per rank; hand communicator r to the thread that plays rank r. A communicator is used by one
// thread at a time. Aborting any of them (or any communicator split from them) aborts the whole world: every rank
// waiting in a collective throws CommError("[comm] rank r aborted: reason").
std::vector<std::unique_ptr<Communicator>> make_local_world(int world_size, const LocalWorldOptions& options = {});

// Runs fn on `world_size` threads, one per rank, and joins them. If a rank throws, its world is aborted (the other
// ranks' pending collectives throw instead of hanging) and the first exception thrown is rethrown here. A rank
// that returns while others still wait for it in a collective also ends the world with a CommError.
void run_local_world(int world_size, const std::function<void(Communicator&)>& fn,
                     const LocalWorldOptions& options = {});

}  // namespace ds::comm
