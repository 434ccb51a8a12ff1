// Sharded-then-gathered checkpoint save (all ranks take part; only rank 0 touches files).
//
// 1. Snapshot (every rank, in parallel): the replicated tensors are split into W shares of
//    about equal bytes by a deterministic assignment that every rank computes alike; each
//    rank copies only its share to host memory, checksums it, and adds its own RankState.
//    This is the only phase the training loop must wait for.
// 2. Gather: shares travel to rank 0 through the Communicator in rounds of at most
//    chunk_bytes per rank, so rank 0 holds its own share plus one chunk per rank (and at
//    most one partly received tensor per rank) at a time, never a second copy of the model.
// 3. Write + commit (rank 0): each completed tensor goes straight to the HDF5 file under a
//    temporary name; then the atomic commit (checkpoint/commit.h).
// 4. Agreement: rank 0's outcome (success, or the error with its kind and message) is
//    broadcast, so every rank returns or throws the same thing at the same point.
//
// Thread-safety: a PendingSave may be finished on another thread than the one that
// snapshotted it, provided its communicator is used by no other thread meanwhile.
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

// A tensor every rank holds identically; materialised only by the rank that owns it.
struct TensorSource {
  std::string path;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  // Copies the tensor's bytes (row-major) into dst (host memory, `bytes` long).
  std::function<void(void* dst)> copy_to;
};

struct SaveRequest {
  CheckpointMeta meta;                 // used on rank 0
  std::vector<TensorSource> tensors;   // same list, same order, on every rank
  RankState rank_state;                // this rank's own state
  std::string final_path;              // where the committed file will live (rank 0)
  bool update_latest = true;
  size_t chunk_bytes = 64u << 20;      // gather round size per rank
};

struct SaveResult {
  std::string file;
  int64_t global_step = 0;
  uint64_t bytes = 0;
  double snapshot_s = 0;  // phase 1 on this rank
  double write_s = 0;     // phases 2-4
};

// Phase 1 done; phases 2-4 still to run (possibly on a background thread).
class PendingSave {
 public:
  ~PendingSave();
  // Runs phases 2-4. Collective over `comm`. Throws ddp::AgreedError (same on all ranks) if
  // the save failed anywhere.
  SaveResult finish(Communicator& comm, FileSystem& fs);

 private:
  friend std::unique_ptr<PendingSave> snapshot_for_save(Communicator&, SaveRequest);
  SaveRequest request_;
  std::vector<uint8_t> stream_;  // this rank's serialised share (records back to back)
  double snapshot_s_ = 0;
};

// Phase 1. Not collective (no communication), but every rank must call it for the save.
std::unique_ptr<PendingSave> snapshot_for_save(Communicator& comm, SaveRequest request);

// Owner rank of each tensor: greedy by size, deterministic.
std::vector<int> assign_shares(const std::vector<TensorSource>& tensors, int world_size);

}  // namespace ddp::ckpt
