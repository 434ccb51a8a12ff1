#include "collectives/cuda_check.h"

#include <fmt/format.h>

#include "collectives/error.h"
#include "collectives/mpi_check.h"

namespace ddp {

void cuda_check(cudaError_t rc, const char* call) {
  if (rc == cudaSuccess) return;
  throw Error(ErrorKind::kCollective,
              fmt::format("{} failed on rank {}: {} ({})", call, world_rank_or_minus_one(),
                          cudaGetErrorString(rc), cudaGetErrorName(rc)));
}

void nccl_check(ncclResult_t rc, const char* call) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  const char* last = ncclGetLastError(nullptr);
  throw Error(ErrorKind::kCollective,
              fmt::format("{} failed on rank {}: {}{}{}", call, world_rank_or_minus_one(),
                          ncclGetErrorString(rc), last && *last ? ": " : "", last ? last : ""));
}

int cuda_device_count_or_zero() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace ddp
