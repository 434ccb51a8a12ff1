// Sharded-then-gathered checkpoint save (all ranks take part; only rank 0 touches files).
//
// 1. Snapshot (every rank, in parallel): the replicated tensors are split into W shares of
//    about equal bytes by a deterministic assignment that every rank computes alike; each
//    rank copies only its share to host memory (a SnapshotBuffer the caller keeps between
//    saves, so the copy runs at memory speed) and adds its own RankState. This is the only
//    phase the training loop must wait for. With `zero_copy` (a synchronous save) no rank
//    copies tensors that are readable in place: rank 0 writes, and the others send, straight
//    from the tensors' host memory. With `defer_copies` (an async save) the copies of tensors
//    that change only at an optimizer update run on the save's thread while the next
//    forward/backward runs (CheckFreq's pipelined snapshot); the training thread joins in,
//    and waits for the rest, only in PendingSave::complete_snapshot() before that update.
// 2. Gather: shares travel to rank 0 through the Communicator in rounds of at most half
//    of chunk_bytes, one sending rank per round (rank 1's share, then rank 2's, ...), into a
//    receive ring of two chunks (checkpoint/root_writer.h), so rank 0 holds its own snapshot
//    (none in a synchronous save) plus two chunks at a time, never a second copy of the
//    model. A round never spans two pieces of memory (a tensor read in place is sent in
//    rounds of its own, cut into equal parts).
// 3. Write + commit (rank 0): a writer thread streams rank 0's share, then each received
//    round, into the HDF5 file under a temporary name while the next round is received
//    (transfer and write overlap); then the atomic commit (checkpoint/commit.h).
// 4. Agreement: rank 0's outcome (success, or the error with its kind and message) is
//    broadcast, so every rank returns or throws the same thing at the same point.
//
// Integrity: every rank but 0 checksums its tensors (xxh3) at the start of finish(), from the
// memory it then sends; rank 0 stores those checksums with the datasets without hashing the
// bytes again (every load and `ddp-checkpoint verify` checks them, so a transfer that changed
// a byte is caught there), and hashes its own tensors while writing them.
//
// Thread-safety: a PendingSave may be finished on another thread than the one that
// snapshotted it, provided its communicator is used by no other thread meanwhile. All HDF5
// calls of one save happen on its writer thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "collectives/communicator.h"

namespace ddp::ckpt {

class FileSystem;

// A tensor every rank holds identically (materialised only by the rank whose share it falls
// in), or one that a single rank holds (`owner`: sharded optimizer state, ZeRO-1).
struct TensorSource {
  std::string path;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  // Copies the tensor's bytes (row-major) into dst (host memory, `bytes` long).
  std::function<void(void* dst)> copy_to;
  // Non-null when the same bytes are readable in place (host memory, row-major): used by a
  // zero_copy save instead of copy_to.
  const void* host_data = nullptr;
  // True when the tensor changes only at an optimizer update (parameters, optimizer state),
  // not in forward (BatchNorm's running statistics do): with SaveRequest::defer_copies, and
  // host_data set, its copy may run after snapshot_for_save has returned.
  bool changes_only_at_update = false;
  // -1: replicated, any share rank may send it. Otherwise the only rank that holds it: its
  // share always includes it (share_ranks or not), and on the other ranks the entry is a
  // description only (path, dtype, shape, bytes; copy_to and host_data unset).
  int owner = -1;
};

// Host memory for one rank's snapshot. Kept by the caller between saves: a fresh allocation
// every save costs a page fault and a kernel zero-fill per page (slower than the copy itself).
// Thread-safety: used by one save at a time (at most one save is in flight).
class SnapshotBuffer {
 public:
  SnapshotBuffer() = default;
  ~SnapshotBuffer();
  SnapshotBuffer(const SnapshotBuffer&) = delete;
  SnapshotBuffer& operator=(const SnapshotBuffer&) = delete;

  // Room for `bytes`, uninitialised; keeps the old storage when it is large enough.
  uint8_t* reserve(size_t bytes);
  size_t capacity() const { return capacity_; }

  // Optional: called on new storage after it is allocated, and before it is freed (the runtime
  // page-locks it for device-to-host copies when the model is on a GPU).
  std::function<void(void* data, size_t bytes)> on_allocate;
  std::function<void(void* data)> on_release;

 private:
  void release();
  std::unique_ptr<uint8_t[]> data_;
  size_t capacity_ = 0;
};

struct SaveRequest {
  CheckpointMeta meta;                 // used on rank 0
  std::vector<TensorSource> tensors;   // same list, same order, on every rank
  RankState rank_state;                // this rank's own state
  std::string final_path;              // where the committed file will live (rank 0)
  bool update_latest = true;
  size_t chunk_bytes = 16u << 20;      // rank 0 receive ring = 2 chunks; rounds <= chunk / 2
  // Every rank reads its share from TensorSource::host_data (where set) instead of a snapshot:
  // rank 0 writes it, the others send it from there.
  // REQUIRES when true: those tensors stay unchanged until finish() returns (the caller waits
  // for the save: a synchronous save).
  bool zero_copy = false;
  // Copies of sources with host_data and changes_only_at_update are left to
  // PendingSave::complete_snapshot() (which finish() runs first, on the async save's thread):
  // snapshot_for_save returns after the metadata and the other copies.
  // REQUIRES when true: the caller calls complete_snapshot() before anything changes those
  // tensors (the next optimizer update), and keeps them alive until then.
  bool defer_copies = false;
  // Reused snapshot storage (null: a fresh one for this save).
  std::shared_ptr<SnapshotBuffer> buffer;
  // The ranks that take a share of the tensors (empty: every rank); the others send only
  // their RankState. The runtime passes the ranks on rank 0's host when the job spans hosts:
  // every rank holds the replicated state, so no tensor needs to cross the network to reach
  // the writer. Same on every rank; must include 0.
  std::vector<int> share_ranks;
};

struct SaveResult {
  std::string file;
  int64_t global_step = 0;
  uint64_t bytes = 0;
  double snapshot_s = 0;  // phase 1 on this rank (the part on the caller's thread)
  double deferred_copy_s = 0;  // deferred copies, on whichever thread ran them (0: none)
  double write_s = 0;     // phases 2-4
};

// Phase 1 done; phases 2-4 still to run (possibly on a background thread).
class PendingSave {
 public:
  ~PendingSave();
  // Runs phases 2-4. Collective over `comm`. Throws ddp::AgreedError (same on all ranks) if
  // the save failed anywhere.
  SaveResult finish(Communicator& comm, FileSystem& fs);

  // Returns once every copy deferred by SaveRequest::defer_copies is done: copies the pieces
  // not yet taken (in parallel with finish()'s thread, if it is running), then waits for the
  // ones in progress there. Returns at once when nothing is left. Thread-safe: meant to be
  // called from the training thread while finish() runs on another.
  void complete_snapshot();

  struct DeferredCopies;  // sharded_save.cpp

 private:
  friend std::unique_ptr<PendingSave> snapshot_for_save(Communicator&, SaveRequest);
  struct Segment {  // a piece of this rank's record stream
    const uint8_t* data;
    size_t bytes;
  };
  struct ChecksumSlot {  // where a tensor record's checksum goes, and what it covers
    size_t slot;          // offset into the snapshot buffer
    const uint8_t* data;  // the tensor's bytes: in the snapshot, or in place (zero_copy)
    size_t bytes;
  };
  SaveRequest request_;
  std::shared_ptr<SnapshotBuffer> buffer_;
  std::vector<Segment> stream_;            // records back to back (see sharded_save.cpp)
  std::vector<ChecksumSlot> checksums_;    // ranks other than 0; computed by finish()
  std::vector<TensorSource> keep_alive_;   // zero_copy: owners of the memory stream_ points to
  std::shared_ptr<DeferredCopies> deferred_;  // defer_copies: the copies still to run
  uint8_t* base_ = nullptr;                // buffer_'s storage
  double snapshot_s_ = 0;
};

// Phase 1. Not collective (no communication), but every rank must call it for the save.
std::unique_ptr<PendingSave> snapshot_for_save(Communicator& comm, SaveRequest request);

// Owner rank of each tensor: TensorSource::owner where set; the replicated ones greedy by size,
// deterministic, among `share_ranks` (empty: every rank of `world_size`), onto the rank with
// the fewest bytes so far, fixed owners' bytes included.
std::vector<int> assign_shares(const std::vector<TensorSource>& tensors, int world_size,
                               const std::vector<int>& share_ranks = {});

}  // namespace ddp::ckpt
