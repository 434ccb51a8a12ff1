// Reading and verifying checkpoint files (layout in docs/checkpoint-format.md).
//
// Opening a file runs, in order:
//   (a) missing file                                    -> kNotFound
//   (b) sidecar present: size + whole-file xxh3 checked BEFORE HDF5 sees the file
//                                                        -> kCorruption "checksum mismatch ..."
//       (no sidecar: continue; verified_file() == false so callers can warn)
//   (c) not HDF5, or HDF5 without root attribute format_version
//                                                        -> kInvalidArgument "not a ddp-runtime
//                                                           checkpoint"
//       format_version > kFormatVersion                  -> kInvalidArgument "written by a newer
//                                                           ddp-runtime (format N, ...)"
// and each dataset read is checked against its own xxh3 -> kCorruption naming the dataset.
// HDF5 failures on an existing file (damaged metadata) are kCorruption; the OS refusing to read
// is kIOError.
//
// Thread-safety: a FileReader is used by one thread at a time; distinct readers are independent.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "collectives/error.h"

namespace ddp::ckpt {

struct ReadOptions {
  // Whole-file size + xxh3 against the sidecar before HDF5 opens the file (step b). Costs one
  // sequential read of the file; turn off only where the file was just verified.
  bool verify_file_checksum = true;
  // Each dataset's bytes against its "xxh3" attribute; names the corrupt dataset precisely.
  bool verify_tensor_checksums = true;
  // Load tensors under "optimizer/" (false for inference / fine-tuning).
  bool include_optimizer = true;
  // Load /ranks/* (RNG and sampler state; only exact resume needs them).
  bool include_ranks = true;
  // Only tensors whose path starts with this ("" = all), e.g. "model/".
  std::string path_prefix;
};

struct TensorInfo {
  std::string path;  // "model/layers.0.weight"
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  uint64_t checksum = 0;  // recorded xxh3
};

class FileReader {
 public:
  // Runs steps (a)-(c) and reads the metadata (root attributes, /meta, /metrics).
  explicit FileReader(const std::string& path, const ReadOptions& options = {});
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  const std::string& path() const;
  const CheckpointMeta& meta() const;
  bool verified_file() const;  // true when the sidecar existed and matched

  // Every tensor dataset (not /meta, not /ranks), in the order they were written.
  const std::vector<TensorInfo>& tensors() const;
  const TensorInfo* find(const std::string& path) const;  // nullptr if absent

  // Reads one tensor; kNotFound if absent, kCorruption on a checksum mismatch (when verify).
  TensorEntry read_tensor(const std::string& path, bool verify_checksum = true) const;
  // The same into a caller buffer of exactly info.bytes bytes (e.g. a tensor's storage).
  void read_tensor_into(const std::string& path, void* dst, size_t bytes,
                        bool verify_checksum = true) const;
  // /ranks/*, sorted by rank.
  std::vector<RankState> read_ranks(bool verify_checksum = true) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Metadata only: no whole-file checksum, no tensor data (cheap; used by listings).
CheckpointMeta read_meta(const std::string& path);

// Everything selected by `options`; result.verified_file tells whether the sidecar matched.
Checkpoint read_checkpoint(const std::string& path, const ReadOptions& options = {});

// Tensor paths in write order.
std::vector<std::string> list_tensors(const std::string& path);

struct VerifyResult {
  std::optional<Error> error;  // the first problem found; empty if the file is valid
  bool verified_file = false;  // whole-file checksum checked against a sidecar
  int64_t datasets_checked = 0;
  bool ok() const { return !error.has_value(); }
};

// Full check: steps (a)-(c), then every dataset's checksum (tensors, ranks, meta), one at a
// time (memory: the largest dataset). Never throws a ddp::Error: it is the result.
VerifyResult verify_file(const std::string& path);

}  // namespace ddp::ckpt
