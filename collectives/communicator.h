// Communicator: the one seam through which ranks talk to each other.
//
// The runtime's DDP engine all-reduces gradients through it and the checkpoint code gathers
// state through it; neither knows which backend is underneath. Buffers are raw pointers plus
// an element count and a DType, so this layer needs no LibTorch (runtime/tensor_comm.h adds
// the tensor overloads). For the NCCL backend the pointers are device pointers.
//
// Contract for every collective: all ranks of the communicator call it, in the same order,
// with matching counts and dtypes. Every blocking call and every Work::wait() is bounded by
// options().timeout_s; on expiry the call throws ddp::Error(kTimeout) naming the collective
// (non-blocking waits) or a watchdog ends the whole job with that message (blocking calls).
//
// Thread-safety: a Communicator may be used from one thread at a time, except that a Work
// returned by all_reduce_async may be tested/waited from the thread that later uses the
// communicator (autograd hooks launch, the training thread waits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collectives/dtype.h"

namespace ddp {

struct CommunicatorOptions {
  // Upper bound on any wait, in seconds. A rank that died or stalls makes the others fail
  // with a message instead of hanging forever.
  double timeout_s = 300.0;
};

// A launched non-blocking collective. Destroying an unfinished Work waits for it.
class Work {
 public:
  virtual ~Work() = default;
  // Makes progress and reports completion without blocking.
  virtual bool test() = 0;
  // Blocks until done or the communicator's timeout passes (throws ddp::Error(kTimeout)).
  virtual void wait() = 0;
};

// Receive side of Communicator::gather_bytes_into. Rank r's bytes are
// [data() + offset[r], data() + offset[r] + size[r]).
// Thread-safety: none; one user at a time.
class GatherBuffer {
 public:
  // Makes room for `bytes` without initialising it; keeps the old storage when it is enough.
  // On caller-owned memory (use_memory) it never allocates: more than that memory's capacity
  // throws ddp::Error(kInternal).
  uint8_t* reserve(size_t bytes);
  // From now on receives into [memory, memory + capacity), which the caller owns and keeps
  // alive (a piece of a receive ring, say); frees storage of its own, if any.
  void use_memory(uint8_t* memory, size_t capacity);
  uint8_t* data() { return memory_; }
  const uint8_t* data() const { return memory_; }
  const uint8_t* of(int rank) const { return memory_ + offset[static_cast<size_t>(rank)]; }
  size_t capacity() const { return capacity_; }

  std::vector<size_t> offset, size;

 private:
  std::unique_ptr<uint8_t[]> owned_;
  uint8_t* memory_ = nullptr;  // owned_, or the caller's memory
  size_t capacity_ = 0;
  bool external_ = false;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend_name() const = 0;
  virtual const CommunicatorOptions& options() const = 0;

  virtual void barrier() = 0;
  // In place: root's `count` elements are copied into every rank's `data`.
  virtual void broadcast(void* data, size_t count, DType dtype, int root) = 0;
  // In place reduction of `count` elements across all ranks.
  virtual void all_reduce(void* data, size_t count, DType dtype, ReduceOp op) = 0;
  // Same, non-blocking. REQUIRES: `data` stays valid and untouched until the Work completes.
  virtual std::unique_ptr<Work> all_reduce_async(void* data, size_t count, DType dtype,
                                                 ReduceOp op) = 0;
  // recv holds size() * count elements, rank r's contribution at offset r * count.
  virtual void all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
  // Sharded collectives (ZeRO): the buffer is cut into one part per rank, rank r's part
  // `counts[r]` elements long at offset counts[0] + ... + counts[r - 1] (parts may be empty;
  // `counts` has size() entries, the same on every rank).
  // Reduce-scatter: `send` holds every part; once the Work completes, `recv` (counts[rank()]
  // elements) holds this rank's part reduced over all ranks.
  // REQUIRES: send and recv do not overlap and stay valid and untouched until completion.
  virtual std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv,
                                                     const std::vector<size_t>& counts,
                                                     DType dtype, ReduceOp op) = 0;
  // All-gather in place: on entry this rank's part of `data` holds its contribution; on
  // return every part holds its owner's.
  virtual void all_gather_into(void* data, const std::vector<size_t>& counts, DType dtype) = 0;
  // Gathers a variable number of bytes from every rank to `root` into `out` (used at root
  // only; may be null elsewhere). Host memory only. A GatherBuffer reused across calls
  // allocates only when a round is larger than every earlier one (no zero-fill, no copies
  // beyond the transport's).
  virtual void gather_bytes_into(const void* data, size_t bytes, int root, GatherBuffer* out) = 0;
  // The same into fresh vectors: at root size() entries (rank order); elsewhere empty.
  std::vector<std::vector<uint8_t>> gather_bytes(const void* data, size_t bytes, int root);
  // The inverse: root sends (*parts)[r] to rank r and every rank returns its own part (root
  // included). `parts` is read at root only (size() entries; may be null elsewhere). Host
  // memory only.
  virtual std::vector<uint8_t> scatter_bytes(const std::vector<std::vector<uint8_t>>* parts,
                                             int root) = 0;
  // Ends every process of the job with `exit_code`. Used when one rank cannot continue and
  // the others may be blocked in a collective.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// Broadcasts a string from root (host memory). Convenience built on broadcast().
std::string broadcast_string(Communicator& comm, const std::string& value, int root);
// Every rank's string, in rank order, on every rank (host memory; built on all_gather and
// all_gather_into).
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& value);

}  // namespace ddp
