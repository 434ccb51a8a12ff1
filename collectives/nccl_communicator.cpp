#include "collectives/nccl_communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

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

// Offsets of parts of `counts` elements, back to back; whether all parts are equal.
std::vector<size_t> part_offsets(const std::vector<size_t>& counts, int size, const char* call,
                                 bool* equal) {
  if (counts.size() != static_cast<size_t>(size)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{}: {} part counts for {} ranks", call, counts.size(), size));
  }
  std::vector<size_t> offsets;
  size_t total = 0;
  *equal = true;
  for (size_t c : counts) {
    offsets.push_back(total);
    total += c;
    if (c != counts.front()) *equal = false;
  }
  return offsets;
}

cudaEvent_t new_event() {
  cudaEvent_t ev = nullptr;
  DDP_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  return ev;
}

class NcclWork final : public Work {
 public:
  // `what` names the collective in errors.
  NcclWork(NcclCommunicator& comm, cudaEvent_t done, const char* what = "ncclAllReduce")
      : comm_(comm), done_(done), what_(what) {}
  ~NcclWork() override {
    if (!finished_) {
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ddp: abandoning an unfinished %s: %s\n", what_, e.what());
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
    comm_.wait_event(done_, what_);
    finished_ = true;
  }

 private:
  NcclCommunicator& comm_;
  cudaEvent_t done_;
  const char* what_;
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

// Unequal parts: one ncclReduce (ncclBroadcast) per part rooted at its owner, in one group,
// as PyTorch's reduce_scatter_v and all_gather_v do.
std::unique_ptr<Work> NcclCommunicator::reduce_scatter_async(const void* send, void* recv,
                                                             const std::vector<size_t>& counts,
                                                             DType dtype, ReduceOp op) {
  bool equal = false;
  const auto offsets = part_offsets(counts, size(), "ncclReduceScatter", &equal);
  const size_t esize = dtype_size(dtype);
  cudaEvent_t done = order_after_compute();
  if (equal) {
    DDP_NCCL_CHECK(ncclReduceScatter(send, recv, counts.front(), nccl_type(dtype), nccl_op(op),
                                     comm_, nccl_stream_));
  } else {
    DDP_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      const auto k = static_cast<size_t>(r);
      if (counts[k] == 0) continue;
      DDP_NCCL_CHECK(ncclReduce(static_cast<const char*>(send) + offsets[k] * esize, recv,
                                counts[k], nccl_type(dtype), nccl_op(op), r, comm_,
                                nccl_stream_));
    }
    DDP_NCCL_CHECK(ncclGroupEnd());
  }
  DDP_CUDA_CHECK(cudaEventRecord(done, nccl_stream_));
  return std::make_unique<NcclWork>(*this, done, "ncclReduceScatter");
}

void NcclCommunicator::all_gather_into(void* data, const std::vector<size_t>& counts,
                                       DType dtype) {
  bool equal = false;
  const auto offsets = part_offsets(counts, size(), "ncclAllGather", &equal);
  auto* bytes = static_cast<char*>(data);
  const size_t esize = dtype_size(dtype);
  cudaEvent_t done = order_after_compute();
  if (equal) {
    const size_t mine = offsets[static_cast<size_t>(rank())] * esize;
    DDP_NCCL_CHECK(ncclAllGather(bytes + mine, data, counts.front(), nccl_type(dtype), comm_,
                                 nccl_stream_));
  } else {
    DDP_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size(); ++r) {
      const auto k = static_cast<size_t>(r);
      if (counts[k] == 0) continue;
      char* part = bytes + offsets[k] * esize;
      DDP_NCCL_CHECK(ncclBroadcast(part, part, counts[k], nccl_type(dtype), r, comm_,
                                   nccl_stream_));
    }
    DDP_NCCL_CHECK(ncclGroupEnd());
  }
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
