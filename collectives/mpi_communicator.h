// MpiCommunicator: the CPU backend, over Open MPI (shared memory within a node, the network
// across nodes). Host pointers only.
//
// Blocking collectives call the blocking MPI routine (so they run at raw MPI speed) under a
// Watchdog: if one does not return within timeout_s, the job is ended with MPI_Abort and a
// message naming the call. all_reduce_async uses MPI_Iallreduce; its Work makes progress
// whenever test() is called, which the DDP engine does from every autograd hook so that
// reduction proceeds while backward runs. 16-bit floats are reduced by a user-defined MPI
// operation that accumulates in float32.
//
// Across nodes Open MPI's TCP transport moves a non-blocking collective only while some
// thread is inside MPI, and between two hooks nobody is. With DDP_MPI_PROGRESS_THREAD=1 (or
// =auto: only when the ranks span more than one node, MPI_COMM_TYPE_SHARED) and
// MPI_THREAD_MULTIPLE, a progress thread (one per process, shared by every communicator)
// tests the requests in flight every 50 us, sleeping in between, so that the all-reduce moves
// while backward computes. Off by default: on the namespace hosts of docs/multi-node.md,
// which share two CPUs, it measured no gain (docs/performance-multihost.md).
//
// Thread-safety: see communicator.h. MPI is initialised with MPI_THREAD_MULTIPLE where
// available (MpiRuntime), so hooks running on an autograd thread may launch collectives.
#pragma once

#include <mpi.h>

#include <memory>

#include "collectives/communicator.h"
#include "collectives/watchdog.h"

namespace ddp {

// RAII for MPI_Init_thread/MPI_Finalize. Works with mpirun and as a singleton (no mpirun).
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = MPI_THREAD_SINGLE;
};

class MpiCommunicator final : public Communicator {
 public:
  // REQUIRES: MPI is initialised. Duplicates `comm`, so collectives here never mix with
  // other traffic on it.
  explicit MpiCommunicator(CommunicatorOptions options = {}, MPI_Comm comm = MPI_COMM_WORLD);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend_name() const override { return "mpi"; }
  const CommunicatorOptions& options() const override { return options_; }

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
                                     int root) override;
  [[noreturn]] void abort(int exit_code) override;

  MPI_Comm mpi_comm() const { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  CommunicatorOptions options_;
  std::unique_ptr<Watchdog> watchdog_;
  // all_reduce_async hands its requests to the progress thread (see the file comment).
  bool progress_thread_ = false;
};

}  // namespace ddp
