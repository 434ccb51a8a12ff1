// Rank 0's writer for a sharded save (sharded_save.cpp): a thread that creates the HDF5 file
// under its temporary name, writes rank 0's own share, then every round received from the
// other ranks, in order, and closes the file. Internal to checkpoint/.
//
// Rounds are received into one ring of bounded size (two chunks in a save): each round gets
// the next free stretch of the ring large enough for it, so small rounds (record headers)
// never hold up a large one behind them, and the next large round arrives while the writer
// is still writing the last -- the receive and the write overlap whatever the round sizes.
//
// Thread-safety: acquire() and filled() from one receiving thread, in round order; finish()
// from that thread once every round is filled. Every HDF5 call happens on the writer's own
// thread. After a failure the writer stops writing but keeps releasing ring space, so the
// receiving thread never blocks on it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/file_checksum.h"
#include "collectives/communicator.h"

namespace ddp::ckpt {

class RootWriter {
 public:
  using Segments = std::vector<std::pair<const uint8_t*, size_t>>;

  // `own`: rank 0's record stream; `round_bytes`: the size of every round to receive, in
  // order; `ring_bytes`: the receive memory to use at most (a ring; allocated here, never
  // zero-filled). REQUIRES: every round fits in ring_bytes. Starts the writer thread.
  RootWriter(std::string tmp, const CheckpointMeta& meta, Segments own, int world,
             std::vector<size_t> round_bytes, size_t ring_bytes);
  ~RootWriter();  // stops the writer (if finish() was not called) and joins it
  RootWriter(const RootWriter&) = delete;
  RootWriter& operator=(const RootWriter&) = delete;

  // The buffer to receive round k into: a stretch of the ring exactly round_bytes[k] long.
  // Waits until the writer has consumed every earlier round that still occupies it.
  GatherBuffer* acquire(int64_t k);
  // Round k is in its buffer.
  void filled(int64_t k);
  // No more rounds: waits for the writer to close the file. Returns its failure, if any.
  std::exception_ptr finish();
  // Moves out the closed file's FileWriter::block_digests(), for the commit. REQUIRES: finish()
  // returned no failure.
  BlockDigests take_block_digests() { return std::move(digests_); }

 private:
  void run();
  bool overlaps_unconsumed(int64_t k) const;  // REQUIRES: mu_ held

  const std::string tmp_;
  const CheckpointMeta& meta_;
  const Segments own_;
  const int world_;
  const std::vector<size_t> round_bytes_;
  std::vector<size_t> round_pos_;  // where round k lives in the ring
  size_t ring_bytes_ = 0;
  std::unique_ptr<uint8_t[]> ring_;
  std::vector<GatherBuffer> slots_;  // one per round, each a view of its stretch of the ring
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t filled_ = 0, consumed_ = 0;  // rounds received / written
  bool end_ = false, abort_ = false, done_ = false;
  std::exception_ptr failure_;
  BlockDigests digests_;  // set by the writer thread once the file is closed
  std::thread thread_;
};

}  // namespace ddp::ckpt
