// NcclCommunicator: the GPU backend. Device pointers only (except gather_bytes, which moves
// host bytes over the MPI bootstrap communicator).
//
// Set-up: rank 0 creates the ncclUniqueId and broadcasts it over MPI; each rank binds to
// `device` (by default its node-local rank modulo the visible GPUs).
// Ordering: collectives run on the communicator's own CUDA stream. Before each one, an event
// recorded on the compute stream (set_compute_stream; the legacy default stream if unset) is
// waited on by the NCCL stream; after it, the compute stream waits on the NCCL stream's
// completion event when the caller waits. So kernels that produced the input finish before the
// reduction reads it, and kernels that consume the output start after it is written.
// No hangs: host-side waits poll cudaEventQuery and ncclCommGetAsyncError and call
// ncclCommAbort once timeout_s passes or NCCL reports an asynchronous error.
//
// Thread-safety: as communicator.h.
#pragma once

#include <memory>

#include "collectives/communicator.h"
#include "collectives/mpi_communicator.h"

struct ncclComm;
struct CUstream_st;
struct CUevent_st;

namespace ddp {

class NcclCommunicator final : public Communicator {
 public:
  // REQUIRES: a GPU is visible (else throws ddp::Error(kInvalidArgument) saying so).
  // `bootstrap` must outlive this object; device < 0 picks the node-local rank's GPU.
  NcclCommunicator(MpiCommunicator& bootstrap, int device = -1, CommunicatorOptions options = {});
  ~NcclCommunicator() override;

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }
  const char* backend_name() const override { return "nccl"; }
  const CommunicatorOptions& options() const override { return options_; }
  int device() const { return device_; }

  // The stream whose work produces and consumes the buffers (torch's current stream).
  void set_compute_stream(CUstream_st* stream) { compute_stream_ = stream; }

  void barrier() override;
  void broadcast(void* data, size_t count, DType dtype, int root) override;
  void all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override;
  std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType dtype,
                                         ReduceOp op) override;
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override;
  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv,
                                             const std::vector<size_t>& counts, DType dtype,
                                             ReduceOp op) override;
  void all_gather_into(void* data, const std::vector<size_t>& counts, DType dtype) override;
  void gather_bytes_into(const void* data, size_t bytes, int root, GatherBuffer* out) override;
  std::vector<uint8_t> scatter_bytes(const std::vector<std::vector<uint8_t>>* parts,
                                     int root) override;  // host memory, over the bootstrap
  [[noreturn]] void abort(int exit_code) override;

  // Blocks until `done` has completed, polling NCCL for async errors; aborts the NCCL
  // communicator and throws on error or timeout. Used by Work objects.
  void wait_event(CUevent_st* done, const char* what);

 private:
  CUevent_st* order_after_compute();  // returns the completion event to record after the op
  void finish_blocking(CUevent_st* done, const char* what);

  MpiCommunicator& bootstrap_;
  CommunicatorOptions options_;
  int device_ = 0;
  ncclComm* comm_ = nullptr;
  CUstream_st* nccl_stream_ = nullptr;
  CUstream_st* compute_stream_ = nullptr;
  CUevent_st* ready_event_ = nullptr;
};

// Node-local rank (OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID), 0 if unknown.
int local_rank_from_env();

}  // namespace ddp
