#include "collectives/nccl_communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include "collectives/cuda_check.h"
#include "collectives/error.h"

namespace ddp {
namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat64: return ncclFloat64;
    case DType::kFloat16: return ncclFloat16;
    case DType::kBFloat16: return ncclBfloat16;
    case DType::kInt32: return ncclInt32;
    case DType::kInt64: return ncclInt64;
    case DType::kUInt8: return ncclUint8;
  }
  throw Error(ErrorKind::kInternal, "unknown DType");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  throw Error(ErrorKind::kInternal, "unknown ReduceOp");
}

cudaEvent_t new_event() {
  cudaEvent_t ev = nullptr;
  DDP_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  return ev;
}

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator& comm, cudaEvent_t done) : comm_(comm), done_(done) {}
  ~NcclWork() override {
    if (!finished_) {
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ddp: abandoning an unfinished NCCL all-reduce: %s\n", e.what());
      }
    }
    cudaEventDestroy(done_);
  }
  bool test() override {
    if (finished_) return true;
    const cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaErrorNotReady) return false;
    DDP_CUDA_CHECK(rc);
    finished_ = true;
    return true;
  }
  void wait() override {
    if (finished_) return;
    comm_.wait_event(done_, "ncclAllReduce");
    finished_ = true;
  }

 private:
  NcclCommunicator& comm_;
  cudaEvent_t done_;
  bool finished_ = false;
};

}  // namespace

int local_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 0;
}

NcclCommunicator::NcclCommunicator(MpiCommunicator& bootstrap, int device,
                                   CommunicatorOptions options)
    : bootstrap_(bootstrap), options_(options) {
  const int visible = cuda_device_count_or_zero();
  if (visible == 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("rank {}: the NCCL backend needs a GPU, but no CUDA device is "
                            "visible (check CUDA_VISIBLE_DEVICES and the driver)",
                            bootstrap.rank()));
  }
  device_ = device >= 0 ? device : local_rank_from_env() % visible;
  DDP_CUDA_CHECK(cudaSetDevice(device_));
  ncclUniqueId id;
  if (bootstrap_.rank() == 0) DDP_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap_.broadcast(&id, sizeof(id), DType::kUInt8, 0);
  DDP_NCCL_CHECK(ncclCommInitRank(&comm_, bootstrap_.size(), id, bootstrap_.rank()));
  DDP_CUDA_CHECK(cudaStreamCreateWithFlags(&nccl_stream_, cudaStreamNonBlocking));
  ready_event_ = new_event();
}

NcclCommunicator::~NcclCommunicator() {
  if (ready_event_) cudaEventDestroy(ready_event_);
  if (nccl_stream_) cudaStreamDestroy(nccl_stream_);
  if (comm_) ncclCommDestroy(comm_);
}

cudaEvent_t NcclCommunicator::order_after_compute() {
  DDP_CUDA_CHECK(cudaSetDevice(device_));
  DDP_CUDA_CHECK(cudaEventRecord(ready_event_, compute_stream_));
  DDP_CUDA_CHECK(cudaStreamWaitEvent(nccl_stream_, ready_event_, 0));
  return new_event();
}

void NcclCommunicator::wait_event(cudaEvent_t done, const char* what) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(options_.timeout_s);
  for (;;) {
    const cudaError_t rc = cudaEventQuery(done);
    if (rc == cudaSuccess) break;
    if (rc != cudaErrorNotReady) DDP_CUDA_CHECK(rc);
    ncclResult_t async_rc = ncclSuccess;
    DDP_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_rc));
    if (async_rc != ncclSuccess && async_rc != ncclInProgress) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      nccl_check(async_rc, what);
    }
    if (clock::now() > deadline) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      throw Error(ErrorKind::kTimeout,
                  fmt::format("{} on rank {} did not complete within {} s (ddp.timeout_s): a "
                              "peer rank died or stalled; NCCL communicator aborted",
                              what, rank(), options_.timeout_s));
    }
    std::this_thread::yield();
  }
  // Consumers on the compute stream start after the collective wrote its output.
  DDP_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, done, 0));
}

void NcclCommunicator::finish_blocking(cudaEvent_t done, const char* what) {
  try {
    DDP_CUDA_CHECK(cudaEventRecord(done, nccl_stream_));
    wait_event(done, what);
  } catch (...) {
    cudaEventDestroy(done);
    throw;
  }
  cudaEventDestroy(done);
}

void NcclCommunicator::barrier() { bootstrap_.barrier(); }

void NcclCommunicator::broadcast(void* data, size_t count, DType dtype, int root) {
  cudaEvent_t done = order_after_compute();
  DDP_NCCL_CHECK(ncclBroadcast(data, data, count, nccl_type(dtype), root, comm_, nccl_stream_));
  finish_blocking(done, "ncclBroadcast");
}

void NcclCommunicator::all_reduce(void* data, size_t count, DType dtype, ReduceOp op) {
  cudaEvent_t done = order_after_compute();
  DDP_NCCL_CHECK(
      ncclAllReduce(data, data, count, nccl_type(dtype), nccl_op(op), comm_, nccl_stream_));
  finish_blocking(done, "ncclAllReduce");
}

std::unique_ptr<Work> NcclCommunicator::all_reduce_async(void* data, size_t count, DType dtype,
                                                         ReduceOp op) {
  cudaEvent_t done = order_after_compute();
  DDP_NCCL_CHECK(
      ncclAllReduce(data, data, count, nccl_type(dtype), nccl_op(op), comm_, nccl_stream_));
  DDP_CUDA_CHECK(cudaEventRecord(done, nccl_stream_));
  return std::make_unique<NcclWork>(*this, done);
}

void NcclCommunicator::all_gather(const void* send, void* recv, size_t count, DType dtype) {
  cudaEvent_t done = order_after_compute();
  DDP_NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), comm_, nccl_stream_));
  finish_blocking(done, "ncclAllGather");
}

void NcclCommunicator::gather_bytes_into(const void* data, size_t bytes, int root,
                                         GatherBuffer* out) {
  bootstrap_.gather_bytes_into(data, bytes, root, out);
}

std::vector<uint8_t> NcclCommunicator::scatter_bytes(
    const std::vector<std::vector<uint8_t>>* parts, int root) {
  return bootstrap_.scatter_bytes(parts, root);
}

void NcclCommunicator::abort(int exit_code) {
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
  bootstrap_.abort(exit_code);
}

}  // namespace ddp
