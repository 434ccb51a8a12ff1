// The sidecar `<checkpoint>.h5.sum`: size and whole-file checksum of a committed checkpoint,
// written at commit (commit.h) and checked by the reader BEFORE HDF5 opens the file, so that a
// truncated or bit-flipped file is reported as corruption instead of whatever HDF5 makes of it.
//
// JSON: {"bytes": N, "algorithm": "xxh3_64_b64k", "checksum": "<16 hex>", "global_step": S}
// (algorithms: checkpoint/file_checksum.h; files committed before 2026-12-03 say "xxh3_64")
// plus, only while a commit that reuses an existing name (e.g. "last.h5") is in flight,
// "replaces": {"bytes": ..., "checksum": ..., "global_step": ...} describing the content the name
// held before; a file matching either entry is intact (docs/checkpoint-format.md).
//
// Thread-safety: plain functions; concurrent use on the same files needs external ordering.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "checkpoint/file_system.h"

namespace ddp::ckpt {

constexpr const char* kSidecarSuffix = ".sum";

struct FileDigest {
  uint64_t bytes = 0;
  uint64_t checksum = 0;    // of the whole file, by `algorithm`
  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm;
  int64_t global_step = 0;  // the step the file was saved at (informational)
};

struct Sidecar {
  FileDigest current;
  std::optional<FileDigest> replaces;  // see the header comment

  // The recorded entry whose size equals `bytes` (current first), or nullptr. Both entries
  // can have the same size; only a hash tells them apart (matching()).
  const FileDigest* entry_for_size(uint64_t bytes) const;
  // The recorded entry that `hash` matches (size, algorithm and checksum), or nullptr.
  const FileDigest* matching(const FileHash& hash) const;
};

// Hashes `checkpoint_path` (whose size is `size`) by the algorithm of each entry of that size
// (once per distinct algorithm) and returns the entry it matches, or nullptr; *actual (if
// given) gets the hash by the first algorithm tried (for an error message). nullptr without
// hashing when no entry has that size.
const FileDigest* find_matching_entry(FileSystem& fs, const Sidecar& sidecar,
                                      const std::string& checkpoint_path, uint64_t size,
                                      FileHash* actual = nullptr);

std::string sidecar_path_for(const std::string& checkpoint_path);
std::string sidecar_to_json(const Sidecar& sidecar);
// Throws kCorruption ("sidecar '<where>' is unreadable: ...") on anything but what
// sidecar_to_json writes.
Sidecar sidecar_from_json(const std::string& text, const std::string& where);

// nullopt when the checkpoint has no sidecar; throws kCorruption when it has an unreadable one.
std::optional<Sidecar> read_sidecar(FileSystem& fs, const std::string& checkpoint_path);

// Checks the size, then the whole-file checksum of `checkpoint_path` against its sidecar.
// Returns false when there is no sidecar (nothing to check against), true when it matches.
// Throws kNotFound when the file is missing, kCorruption on a mismatch:
//   "checkpoint 'x.h5': size mismatch: recorded 1000 bytes, file has 512 (truncated?)"
//   "checkpoint 'x.h5': checksum mismatch: recorded 0123..., file has 4567..."
bool verify_against_sidecar(FileSystem& fs, const std::string& checkpoint_path);

}  // namespace ddp::ckpt
