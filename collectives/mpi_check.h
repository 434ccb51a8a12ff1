// The one checked wrapper for MPI calls. Every MPI call in ddp-runtime goes through
// DDP_MPI_CHECK, which throws ddp::Error(kCollective) naming the call, this process's rank in
// MPI_COMM_WORLD and MPI's own error string. Communicators created here use
// MPI_ERRORS_RETURN so that errors reach this check instead of aborting silently.
#pragma once

#include <mpi.h>

namespace ddp {

// Throws if rc != MPI_SUCCESS. `call` is the text of the call (for the message).
void mpi_check(int rc, const char* call);

// This process's rank in MPI_COMM_WORLD, or -1 before MPI_Init / after MPI_Finalize.
int world_rank_or_minus_one();

}  // namespace ddp

#define DDP_MPI_CHECK(expr) ::ddp::mpi_check((expr), #expr)
