// Handing a checkpoint that one rank has read to every other rank, so that resume reads the
// file once, on the root, and no other rank needs to see the checkpoint directory (node-local
// disks, or a shared file system spared N simultaneous reads).
//
// Wire order (all on `comm`, host memory):
//   1. a header: the metadata and every tensor's path, dtype, shape, size and checksum, as
//      JSON, broadcast as one string;
//   2. the tensors' bytes, concatenated in header order, broadcast in chunks of at most
//      `chunk_bytes` (tensors of a chunk or more travel in place; smaller ones are packed
//      into one chunk buffer: memory beyond the checkpoint itself is one chunk);
//   2b. tensors meant for one rank only (BroadcastOptions::destination: ZeRO-1 optimizer
//      state goes to the rank that owns its parameter) by scatter, in rounds of at most
//      `chunk_bytes` in all (a larger tensor travels alone), so no other rank ever holds them;
//   3. per-rank state (RNG, sampler position) by scatter: rank r receives the RankState saved
//      by rank r, and nothing when the checkpoint was written by another world size (that
//      state restarts from the seed).
//
// Collective over `comm`; a peer that dies mid-way ends the job through the communicator's
// watchdog like any collective. Tensor checksums travel with the bytes, so a receiver can
// check what it got (`verify` below).
// Thread-safety: none beyond the communicator's.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "checkpoint/checkpoint_data.h"
#include "collectives/communicator.h"

namespace ddp::ckpt {

constexpr size_t kBroadcastChunkBytes = size_t{16} << 20;

struct BroadcastOptions {
  size_t chunk_bytes = kBroadcastChunkBytes;  // > 0
  // Receivers check every tensor's bytes against its xxh3 (a flipped bit on the wire or in
  // memory becomes kCorruption naming the tensor, not a silently different replica).
  bool verify = true;
  // Which rank receives the tensor at `path`: -1 (or no function) every rank, else that rank
  // alone (the root keeps only its own too). Same function on every rank.
  std::function<int(const std::string& path)> destination;
};

// REQUIRES: on `root`, *checkpoint holds what was read; elsewhere it is replaced.
// On return every rank holds the same meta and the tensors meant for it (header order);
// `ranks` holds rank comm.rank()'s own
// state only (or nothing, see above), except on the root, which keeps what it read.
void broadcast_checkpoint(Communicator& comm, int root, Checkpoint* checkpoint,
                          const BroadcastOptions& options = {});

// The JSON header of step 1 and its inverse (exposed for tests). Tensor data is not included;
// decode_header sizes each entry's data to its byte count; `keep(i)` false leaves entry i out.
std::string encode_header(const Checkpoint& checkpoint);
Checkpoint decode_header(const std::string& header,
                         const std::function<bool(size_t index)>& keep = nullptr);

// RankState <-> bytes (step 3).
std::vector<uint8_t> encode_rank_state(const RankState& state);
RankState decode_rank_state(const std::vector<uint8_t>& bytes);

}  // namespace ddp::ckpt
