#include "collectives/mpi_communicator.h"

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "collectives/daemon_reaper.h"
#include "collectives/error.h"
#include "collectives/mpi_check.h"
#include "collectives/mpi_ops.h"
#include "collectives/progress_thread.h"

namespace ddp {
namespace {

// Largest element count handed to one MPI call (MPI counts are int).
constexpr size_t kMaxChunk = size_t{1} << 30;
// How long MPI_Abort gets to end this host's daemon before the reaper does (daemon_reaper.h).
constexpr double kDaemonReaperGraceS = 5.0;

// Set once any non-blocking collective of this process has timed out: the network or a peer
// is gone, and every other request in flight is as good as lost. Destroying an unfinished
// Work then abandons it instead of waiting a second timeout_s while the error unwinds (which
// would double the time until the job is ended).
std::atomic<bool> g_a_collective_timed_out{false};

// DDP_MPI_PROGRESS_THREAD: "1" on, "auto" on when the ranks span nodes, anything else (the
// default) off. Collective over `comm` for "auto".
bool progress_thread_wanted(MPI_Comm comm, int size) {
  const char* v = std::getenv("DDP_MPI_PROGRESS_THREAD");
  if (!v || (std::strcmp(v, "1") != 0 && std::strcmp(v, "auto") != 0)) return false;
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  if (level != MPI_THREAD_MULTIPLE || size == 1) return false;
  if (std::strcmp(v, "1") == 0) return true;
  MPI_Comm node = MPI_COMM_NULL;
  DDP_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int node_size = size;
  DDP_MPI_CHECK(MPI_Comm_size(node, &node_size));
  MPI_Comm_free(&node);
  int spans = node_size < size ? 1 : 0;  // the same answer on every rank
  DDP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &spans, 1, MPI_INT, MPI_MAX, comm));
  return spans == 1;
}

class MpiWork final : public Work {
 public:
  // `data`/`count`: what kAvg scales on completion. `call` names the MPI call in errors;
  // `arrays` are count arrays MPI reads until completion (kept alive here).
  MpiWork(MPI_Request request, void* data, size_t count, DType dtype, ReduceOp op, int size,
          double timeout_s, bool use_progress_thread, const char* call = "MPI_Iallreduce",
          std::vector<int> arrays = {})
      : request_(request), data_(data), count_(count), dtype_(dtype), op_(op), size_(size),
        timeout_s_(timeout_s), call_(call), arrays_(std::move(arrays)) {
    if (use_progress_thread) {
      progressed_ = std::make_shared<Progressed>();
      progressed_->request = request_;
      ProgressThread::get().add(progressed_);
    }
  }

  ~MpiWork() override {
    if (!done_ && g_a_collective_timed_out.load()) return;  // the process is ending the job
    if (!done_) {
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ddp: abandoning an unfinished %s: %s\n", call_, e.what());
      }
    }
  }

  bool test() override {
    if (done_) return true;
    if (progressed_) {
      if (!progressed_->done.load(std::memory_order_acquire)) return false;
      mpi_check(progressed_->error.load(), "MPI_Test (progress thread)");
      finish();
      return true;
    }
    int flag = 0;
    DDP_MPI_CHECK(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE));
    if (flag) finish();
    return done_;
  }

  void wait() override {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    for (unsigned spins = 0; !test(); ++spins) {
      // With the progress thread the request moves without us: wait without taking its CPU.
      if (progressed_) std::this_thread::sleep_for(std::chrono::microseconds(20));
      if ((progressed_ || (spins & 1023u) == 0) && clock::now() > deadline) {
        g_a_collective_timed_out.store(true);
        throw Error(ErrorKind::kTimeout,
                    fmt::format("{} of {} {} elements on rank {} did not complete "
                                "within {} s (ddp.timeout_s): a peer rank died or stalled",
                                call_, count_, dtype_name(dtype_), world_rank_or_minus_one(),
                                timeout_s_));
      }
    }
  }

 private:
  void finish() {
    done_ = true;
    if (op_ == ReduceOp::kAvg) scale_in_place(data_, count_, dtype_, size_);
  }

  MPI_Request request_;
  void* data_;
  size_t count_;
  DType dtype_;
  ReduceOp op_;
  int size_;
  double timeout_s_;
  const char* call_;
  std::vector<int> arrays_;
  bool done_ = false;
  std::shared_ptr<Progressed> progressed_;  // set when the progress thread owns the request
};

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  // Open MPI busy-polls while it waits. With more runnable threads than cores (CPU training
  // with one rank per core, plus LibTorch's and MPI's own threads) a spinning rank holds the
  // core its peer needs; yielding while idle measured 2x faster end to end on a loaded
  // machine (docs/performance.md). A user's own setting wins (no overwrite).
  setenv("OMPI_MCA_mpi_yield_when_idle", "1", /*overwrite=*/0);
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) DDP_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_));
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

MpiCommunicator::MpiCommunicator(CommunicatorOptions options, MPI_Comm comm)
    : options_(options) {
  if (!(options_.timeout_s > 0)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("timeout_s must be > 0, got {}", options_.timeout_s));
  }
  DDP_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  DDP_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  DDP_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  DDP_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  create_mpi_ops();
  progress_thread_ = progress_thread_wanted(comm_, size_);
  const int rank = rank_;
  MPI_Comm abort_comm = comm_;
  watchdog_ = std::make_unique<Watchdog>(options_.timeout_s, [rank, abort_comm](
                                                                 const char* what, double s) {
    std::fprintf(stderr,
                 "ddp: rank %d: %s did not complete within %.1f s (ddp.timeout_s): a peer rank "
                 "or its host died, stalled or became unreachable; %s\n",
                 rank, what, s, kAbortNotice);
    std::fflush(stderr);
    arm_daemon_reaper(kDaemonReaperGraceS);
    MPI_Abort(abort_comm, kExitDistributed);
  });
}

MpiCommunicator::~MpiCommunicator() {
  watchdog_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::barrier() {
  Watchdog::Scope guard(*watchdog_, "MPI_Barrier");
  DDP_MPI_CHECK(MPI_Barrier(comm_));
}

void MpiCommunicator::broadcast(void* data, size_t count, DType dtype, int root) {
  Watchdog::Scope guard(*watchdog_, "MPI_Bcast");
  auto* bytes = static_cast<char*>(data);
  const size_t esize = dtype_size(dtype);
  for (size_t off = 0; off < count; off += kMaxChunk) {
    const size_t n = std::min(kMaxChunk, count - off);
    DDP_MPI_CHECK(MPI_Bcast(bytes + off * esize, static_cast<int>(n), mpi_type(dtype), root, comm_));
  }
}

void MpiCommunicator::all_reduce(void* data, size_t count, DType dtype, ReduceOp op) {
  check_avg(dtype, op);
  const MPI_Op mop = mpi_op(dtype, op);
  Watchdog::Scope guard(*watchdog_, "MPI_Allreduce");
  auto* bytes = static_cast<char*>(data);
  const size_t esize = dtype_size(dtype);
  for (size_t off = 0; off < count; off += kMaxChunk) {
    const size_t n = std::min(kMaxChunk, count - off);
    DDP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, bytes + off * esize, static_cast<int>(n),
                                mpi_type(dtype), mop, comm_));
  }
  if (op == ReduceOp::kAvg) scale_in_place(data, count, dtype, size_);
}

std::unique_ptr<Work> MpiCommunicator::all_reduce_async(void* data, size_t count, DType dtype,
                                                        ReduceOp op) {
  check_avg(dtype, op);
  const MPI_Op mop = mpi_op(dtype, op);
  MPI_Request request = MPI_REQUEST_NULL;
  DDP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, checked_int(count, "MPI_Iallreduce"),
                               mpi_type(dtype), mop, comm_, &request));
  return std::make_unique<MpiWork>(request, data, count, dtype, op, size_, options_.timeout_s,
                                   progress_thread_);
}

void MpiCommunicator::all_gather(const void* send, void* recv, size_t count, DType dtype) {
  Watchdog::Scope guard(*watchdog_, "MPI_Allgather");
  const int n = checked_int(count, "MPI_Allgather");
  DDP_MPI_CHECK(MPI_Allgather(count ? send : nullptr, n, mpi_type(dtype), recv, n,
                              mpi_type(dtype), comm_));
}

namespace {
// MPI's counts and displacements for parts of `counts` elements, back to back.
void parts_layout(const std::vector<size_t>& counts, int size, const char* call,
                  std::vector<int>* ints, std::vector<int>* displs) {
  if (counts.size() != static_cast<size_t>(size)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{}: {} part counts for {} ranks", call, counts.size(), size));
  }
  size_t total = 0;
  for (size_t c : counts) {
    ints->push_back(checked_int(c, call));
    if (displs) displs->push_back(checked_int(total, call));
    total += c;
  }
  checked_int(total, call);
}
}  // namespace

std::unique_ptr<Work> MpiCommunicator::reduce_scatter_async(const void* send, void* recv,
                                                            const std::vector<size_t>& counts,
                                                            DType dtype, ReduceOp op) {
  check_avg(dtype, op);
  const MPI_Op mop = mpi_op(dtype, op);
  std::vector<int> ints;
  parts_layout(counts, size_, "MPI_Ireduce_scatter", &ints, nullptr);
  MPI_Request request = MPI_REQUEST_NULL;
  DDP_MPI_CHECK(MPI_Ireduce_scatter(send, recv, ints.data(), mpi_type(dtype), mop, comm_,
                                    &request));
  const size_t mine = counts[static_cast<size_t>(rank_)];
  return std::make_unique<MpiWork>(request, recv, mine, dtype, op, size_, options_.timeout_s,
                                   progress_thread_, "MPI_Ireduce_scatter", std::move(ints));
}

void MpiCommunicator::all_gather_into(void* data, const std::vector<size_t>& counts,
                                      DType dtype) {
  std::vector<int> ints, displs;
  parts_layout(counts, size_, "MPI_Allgatherv", &ints, &displs);
  Watchdog::Scope guard(*watchdog_, "MPI_Allgatherv");
  DDP_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, ints.data(),
                               displs.data(), mpi_type(dtype), comm_));
}

void MpiCommunicator::gather_bytes_into(const void* data, size_t bytes, int root,
                                        GatherBuffer* out) {
  Watchdog::Scope guard(*watchdog_, "MPI_Gatherv");
  const bool at_root = rank_ == root;
  if (at_root && out == nullptr) {
    throw Error(ErrorKind::kInvalidArgument, "gather_bytes_into: null output buffer at root");
  }
  int64_t mine = static_cast<int64_t>(bytes);
  std::vector<int64_t> sizes(at_root ? size_ : 0);
  DDP_MPI_CHECK(MPI_Gather(&mine, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, root, comm_));
  std::vector<int> counts, displs;
  uint8_t* recv = nullptr;
  if (at_root) {
    counts.resize(size_);
    displs.resize(size_);
    out->offset.assign(size_, 0);
    out->size.assign(size_, 0);
    size_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = checked_int(total, "MPI_Gatherv");
      counts[r] = checked_int(static_cast<size_t>(sizes[r]), "MPI_Gatherv");
      out->offset[r] = total;
      out->size[r] = static_cast<size_t>(sizes[r]);
      total += static_cast<size_t>(sizes[r]);
    }
    checked_int(total, "MPI_Gatherv");
    recv = out->reserve(total);
  }
  DDP_MPI_CHECK(MPI_Gatherv(data, checked_int(bytes, "MPI_Gatherv"), MPI_BYTE, recv,
                            counts.data(), displs.data(), MPI_BYTE, root, comm_));
}

std::vector<uint8_t> MpiCommunicator::scatter_bytes(const std::vector<std::vector<uint8_t>>* parts,
                                                    int root) {
  Watchdog::Scope guard(*watchdog_, "MPI_Scatterv");
  const bool at_root = rank_ == root;
  if (at_root && (parts == nullptr || parts->size() != static_cast<size_t>(size_))) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("scatter_bytes: root needs {} parts, got {}", size_,
                            parts ? parts->size() : 0));
  }
  std::vector<int64_t> sizes;
  std::vector<int> counts, displs;
  std::vector<uint8_t> packed;
  if (at_root) {
    size_t total = 0;
    for (const auto& p : *parts) {
      sizes.push_back(static_cast<int64_t>(p.size()));
      displs.push_back(checked_int(total, "MPI_Scatterv"));
      counts.push_back(checked_int(p.size(), "MPI_Scatterv"));
      total += p.size();
    }
    checked_int(total, "MPI_Scatterv");
    packed.reserve(total);
    for (const auto& p : *parts) packed.insert(packed.end(), p.begin(), p.end());
  }
  int64_t mine = 0;
  DDP_MPI_CHECK(MPI_Scatter(sizes.data(), 1, MPI_INT64_T, &mine, 1, MPI_INT64_T, root, comm_));
  std::vector<uint8_t> out(static_cast<size_t>(mine));
  DDP_MPI_CHECK(MPI_Scatterv(packed.data(), counts.data(), displs.data(), MPI_BYTE, out.data(),
                             checked_int(out.size(), "MPI_Scatterv"), MPI_BYTE, root, comm_));
  return out;
}

void MpiCommunicator::abort(int exit_code) {
  std::fflush(stdout);
  std::fprintf(stderr, "ddp: rank %d: %s (exit %d)\n", rank_, kAbortNotice, exit_code);
  std::fflush(stderr);
  arm_daemon_reaper(kDaemonReaperGraceS);
  MPI_Abort(comm_, exit_code);
  std::_Exit(exit_code);
}

}  // namespace ddp
