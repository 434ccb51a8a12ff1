// Atomic publish of a checkpoint file and of the `latest.json` pointer (leveldb's
// SetCurrentFile, Orbax's temporary-then-rename), through a FileSystem so that tests can crash
// or fail any step.
//
// Invariant: a crash (kill -9, power loss) at any instant leaves every previously committed
// checkpoint, its sidecar and latest.json valid; the new checkpoint is either fully committed
// or absent. Leftovers are temporaries (removed by cleanup_temporaries) and, at worst, a
// sidecar without its .h5 (ignored by list_checkpoints, also removed there).
//
// Only rank 0 calls these. REQUIRES: one writer per directory at a time.
// Thread-safety: functions are reentrant; the directory is the shared state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/file_system.h"

namespace ddp::ckpt {

constexpr const char* kLatestFileName = "latest.json";

struct CommitInfo {
  std::string path;          // final path of the checkpoint
  std::string sidecar_path;  // <path>.sum
  uint64_t bytes = 0;
  uint64_t checksum = 0;     // of the whole file, by `algorithm`
  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm;
  int64_t global_step = 0;
  bool latest_updated = false;
};

// Publishes the closed HDF5 file `tmp_path` as `final_path` (same directory):
//   1. fsync tmp, on a helper thread (fs must allow concurrent calls: FileSystem), while
//   2. size + checksum of tmp, reading only the blocks whose digests `known` lacks (null: all;
//      the writer's, e.g. FileWriter::block_digests(), REQUIRES: digests of tmp's bytes as
//      they are now), then the sidecar's and (if update_latest) latest.json's new contents
//      are written to temporaries and fsynced;
//   3. once 1 and 2 are done: rename the sidecar's temporary to <final>.sum, fsync the directory;
//   4. rename tmp -> final;  5. fsync the directory;
//   6. if final existed before: rewrite the sidecar without its "replaces" entry (sidecar.h);
//   7. if update_latest: rename latest.json's temporary over latest.json, fsync the directory.
// Throws ddp::Error (kIOError naming the errno, e.g. ENOSPC). On a failure before step 4 the
// temporaries are removed (best effort) and the previous state is untouched; after step 4 the
// new checkpoint is committed even though the call throws.
CommitInfo commit_checkpoint(FileSystem& fs, const std::string& tmp_path,
                             const std::string& final_path, int64_t global_step,
                             bool update_latest, const BlockDigests* known = nullptr);

// Points the name `link_path` (e.g. "dir/last.h5") at the committed checkpoint `target_path`
// (same directory), with no moment at which the name and its sidecar disagree:
//   1. the name's sidecar is replaced by one naming the target's content and, as "replaces",
//      the content the name holds now (make before break);
//   2. a hard link to the target under a temporary name is renamed over the name (a copy where
//      the file system has no hard links);
//   3. the sidecar is replaced by one naming the target's content alone.
// A crash between any two steps leaves a name whose content matches its sidecar: the old
// content or the new one. Throws ddp::Error (kIOError) on failure, the name still valid.
// REQUIRES: `target_path` was committed (it has its sidecar). Rank 0 only.
void point_name_at(FileSystem& fs, const std::string& target_path, const std::string& link_path);

// Writes `data` to `path` atomically: temp_path_for(path), fsync, rename, fsync the directory.
void write_file_atomically(FileSystem& fs, const std::string& path, const std::string& data);

// latest.json: {"file": "<basename>", "global_step": S, "bytes": N,
//               "checksum": {"algorithm": "xxh3_64_b64k", "value": "<16 hex>"}}
// bytes/checksum describe the file when the pointer was written; the file's sidecar is the
// authority when verifying it (they differ only if the name was later reused and re-committed
// without update_latest, or during such a commit).
struct LatestPointer {
  std::string file;  // basename, as recorded
  std::string path;  // dir joined with file
  int64_t global_step = 0;
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm;
};

// Replaces <dir>/latest.json atomically with a pointer to `file` (a basename in `dir`).
void write_latest(FileSystem& fs, const std::string& dir, const std::string& file,
                  int64_t global_step, uint64_t bytes, uint64_t checksum,
                  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm);

// The pointer in <dir>/latest.json. nullopt when there is none (warning left empty), or when it
// is unusable -- not JSON, fields missing or mistyped, a path instead of a basename, or naming a
// file that does not exist -- with the reason in *warning. Never throws for content problems;
// throws kIOError only when the OS refuses to read an existing file.
std::optional<LatestPointer> read_latest(FileSystem& fs, const std::string& dir,
                                         std::string* warning = nullptr);

struct CheckpointInfo {
  std::string path;  // dir joined with file
  std::string file;  // basename, "*.h5"
  bool sidecar = false;        // a readable sidecar exists
  std::string sidecar_error;   // non-empty when a sidecar exists but is unreadable
  int64_t global_step = -1;    // from the sidecar; -1 without one
  uint64_t bytes = 0;          // size on disk now
  uint64_t recorded_bytes = 0; // from the sidecar (0 without one)
  uint64_t checksum = 0;       // from the sidecar (0 without one)
  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm;  // of `checksum`
};

// Every "*.h5" in `dir` that is not a temporary, newest global_step first (ties by name);
// files without a usable sidecar last, by name. Does not open or hash the files.
std::vector<CheckpointInfo> list_checkpoints(FileSystem& fs, const std::string& dir);

// Removes the checkpoint, then its sidecar, then fsyncs the directory. The caller re-points
// latest.json first if it names this file.
void remove_checkpoint(FileSystem& fs, const std::string& path);

// Removes leftovers of killed saves in `dir`: temporaries (is_temporary_name) and sidecars
// whose .h5 does not exist. Returns how many files were removed.
// REQUIRES: no save in progress in `dir` (call at startup, before the first save).
int cleanup_temporaries(FileSystem& fs, const std::string& dir);

// The temporary name for writing `final_path`: same directory, hidden, tagged with the pid:
// "dir/step=10.h5" -> "dir/.step=10.h5.tmp-<pid>".
std::string temp_path_for(const std::string& final_path);
// Whether a directory entry name is one of ours from temp_path_for (".*.tmp-*").
bool is_temporary_name(const std::string& name);

}  // namespace ddp::ckpt
