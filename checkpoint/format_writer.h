// Streaming writer of ONE checkpoint file (HDF5, layout in docs/checkpoint-format.md).
//
// Usage (rank 0): FileWriter w(temp_path_for(final), meta); w.add_tensor(...) for each tensor
// (or begin_tensor / append_tensor_data / end_tensor to stream one in pieces as they arrive
// from other ranks); w.add_rank_state(...) per rank; w.close(); then commit_checkpoint().
//
// Memory: nothing is buffered beyond HDF5's metadata; tensor bytes go from the caller's buffer
// to the file. Layout is contiguous, no chunking or compression (save speed).
//
// Errors: ddp::Error. kIOError when HDF5 or the OS refuse to create/write/flush/close
// (ENOSPC shows in HDF5's message); kInvalidArgument for a bad path, shape or byte count;
// kInternal when bytes do not match the checksum they were snapshotted with (memory corruption).
// After any error the file is incomplete: destroy the writer and remove the file.
//
// Thread-safety: one writer per thread; distinct writers may run on distinct threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/file_checksum.h"

namespace ddp::ckpt {

class FileWriter {
 public:
  // Creates (truncates) `path` and writes the root attributes, /meta and /metrics from `meta`.
  // An empty meta.hdf5_version is filled with the running library's version.
  FileWriter(const std::string& path, const CheckpointMeta& meta);
  // Closes without throwing if close() was not called; the file is then not a checkpoint.
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  // Writes entry.data at entry.path ("model/layers.0.weight" -> group /model, dataset
  // "layers.0.weight"). entry.checksum == 0: computed; otherwise verified (kInternal).
  void add_tensor(const TensorEntry& entry);
  // The same from a caller-owned buffer (e.g. a tensor's storage), no copy.
  void add_tensor(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                  const void* data, size_t bytes, uint64_t expected_checksum = 0);

  // What begin_tensor does with a nonzero expected checksum.
  enum class Checksum {
    kVerify,  // hash the bytes written; end_tensor throws kInternal on a mismatch
    kStore,   // record it as the dataset's checksum without hashing: whoever computed it
              // hashed the same bytes at their source (another rank's share); every reader
              // checks it, so a transfer that changed them is caught at the next load or verify
  };

  // Streaming: the bytes of one tensor, row-major, in order, in pieces of any size.
  // REQUIRES: no other tensor is open. end_tensor() checks the byte count and the checksum
  // (as add_tensor, or per `mode`) and returns the dataset's checksum: the xxh3 of the bytes.
  void begin_tensor(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                    uint64_t expected_checksum = 0, Checksum mode = Checksum::kVerify);
  void append_tensor_data(const void* data, size_t bytes);
  uint64_t end_tensor();

  // /ranks/<rank>/: cpu_rng and cuda_rng (uint8 datasets), sampler_epoch / sampler_index attrs.
  void add_rank_state(const RankState& state);

  // Flushes and closes the file; throws on failure. Does not fsync (commit_checkpoint does).
  void close();

  const std::string& path() const;
  uint64_t tensor_bytes_written() const;  // payload bytes of tensors so far
  // Digests of the file's 64 KiB blocks that lie wholly inside tensor bytes written so far,
  // hashed from the caller's memory as they were written (HDF5 writes nothing else there):
  // commit_checkpoint(..., &block_digests()) then reads back only the other blocks.
  const BlockDigests& block_digests() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Validates a tensor path: '/'-separated, no empty, "." or ".." component, and not under a
// reserved top-level group ("meta", "metrics", "ranks"). Throws kInvalidArgument.
void check_tensor_path(const std::string& path);

}  // namespace ddp::ckpt
