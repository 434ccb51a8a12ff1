#include "collectives/mpi_check.h"

#include <string>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {

int world_rank_or_minus_one() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) {
    fmt::format_to_n(text, sizeof(text) - 1, "MPI error code {}", rc);
  }
  throw Error(ErrorKind::kCollective,
              fmt::format("{} failed on rank {}: {}", call, world_rank_or_minus_one(), text));
}

}  // namespace ddp
