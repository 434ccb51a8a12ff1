// The one checked wrapper for CUDA runtime and NCCL calls: DDP_CUDA_CHECK / DDP_NCCL_CHECK
// throw ddp::Error(kCollective) naming the call, the rank (MPI_COMM_WORLD) and the library's
// own error string. Only compiled when the NCCL backend is built (DDP_WITH_NCCL).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

namespace ddp {

void cuda_check(cudaError_t rc, const char* call);
void nccl_check(ncclResult_t rc, const char* call);

// Number of visible CUDA devices; 0 when there is no GPU or no usable driver (never throws).
int cuda_device_count_or_zero();

}  // namespace ddp

#define DDP_CUDA_CHECK(expr) ::ddp::cuda_check((expr), #expr)
#define DDP_NCCL_CHECK(expr) ::ddp::nccl_check((expr), #expr)
