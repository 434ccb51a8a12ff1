// File I/O behind a small interface (leveldb's Env), so that the commit sequence can be tested
// against a failed write, a full disk, or a crash between any two steps.
//
// Only the small-file and publish steps go through here (sidecars, latest.json, renames,
// fsyncs, hashing). The HDF5 payload itself is written by HDF5 (format_writer.h).
//
// Errors: every failure throws ddp::Error naming the operation, the path, strerror and the
// errno's name ("write '/ckpt/x.sum': No space left on device (ENOSPC)"). A missing file where
// one is required is kNotFound; anything else the OS refuses is kIOError.
//
// Thread-safety: implementations must allow concurrent calls (commit_checkpoint hashes a file
// on a helper thread while it fsyncs it). PosixFileSystem is stateless; FaultInjectingFileSystem
// serialises its bookkeeping with a mutex.
#pragma once

#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/file_checksum.h"  // FileHash, BlockDigests

namespace ddp::ckpt {

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Creates or truncates `path`, writes all of `data`, fsyncs and closes it: durable content,
  // but not atomic. Publish it with rename() and fsync_dir().
  virtual void write_file(const std::string& path, const std::string& data) = 0;
  // fsync of an existing file's data and metadata.
  virtual void fsync_file(const std::string& path) = 0;
  // fsync of a directory, making renames/creates/removes in it durable.
  virtual void fsync_dir(const std::string& dir) = 0;
  // Atomically replaces `to` with `from` (both in the same file system).
  virtual void rename(const std::string& from, const std::string& to) = 0;
  // Creates `new_path` as a hard link to `existing` (same file system; `new_path` must not
  // exist). Throws kIOError where the file system has no hard links.
  virtual void link(const std::string& existing, const std::string& new_path) = 0;
  // Removes a file; one that does not exist is not an error.
  virtual void remove(const std::string& path) = 0;
  virtual bool exists(const std::string& path) = 0;
  virtual uint64_t file_size(const std::string& path) = 0;
  // Entry names (not paths) of `dir`, sorted, without "." and "..".
  virtual std::vector<std::string> list_dir(const std::string& dir) = 0;
  virtual std::string read_file(const std::string& path) = 0;
  // Size and checksum of the whole file by `algorithm`. The blocks whose digests `known` holds
  // are not read (the writer hashed them from the bytes it wrote; kXxh3Blocks64k only).
  virtual FileHash hash_file(const std::string& path,
                             FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm,
                             const BlockDigests* known = nullptr) = 0;
};

class PosixFileSystem : public FileSystem {
 public:
  void write_file(const std::string& path, const std::string& data) override;
  void fsync_file(const std::string& path) override;
  void fsync_dir(const std::string& dir) override;
  void rename(const std::string& from, const std::string& to) override;
  void link(const std::string& existing, const std::string& new_path) override;
  void remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  uint64_t file_size(const std::string& path) override;
  std::vector<std::string> list_dir(const std::string& dir) override;
  std::string read_file(const std::string& path) override;
  FileHash hash_file(const std::string& path,
                     FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm,
                     const BlockDigests* known = nullptr) override;
};

// A process-wide PosixFileSystem for callers that do not inject one.
FileSystem& default_file_system();

// "ENOSPC" for ENOSPC, ... ("errno 123" for ones without a name here).
std::string errno_name(int err);
// Throws kNotFound for ENOENT, kIOError otherwise: "<op> '<path>': <strerror> (<ENAME>)".
[[noreturn]] void throw_errno(const std::string& op, const std::string& path, int err);

// Path helpers on '/'-separated paths: "a/b/c.h5" -> "a/b" and "c.h5"; "c.h5" -> "." and "c.h5".
std::string parent_dir(const std::string& path);
std::string base_name(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);

// ---------------------------------------------------------------------------------------------
// Test double.

enum class FsOp {
  kWriteFile, kFsyncFile, kFsyncDir, kRename, kRemove, kLink,  // mutating
  kExists, kFileSize, kListDir, kReadFile, kHashFile,   // read-only
  kCount  // the number of ops
};
const char* fs_op_name(FsOp op);
bool fs_op_mutates(FsOp op);

// Thrown by FaultInjectingFileSystem to simulate the process dying. Deliberately not a
// ddp::Error, so that code under test cannot mistake it for an ordinary failure and clean up.
class SimulatedCrash : public std::exception {
 public:
  explicit SimulatedCrash(std::string what) : what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

// Forwards to `base`, except where told to fail or crash. Counts are 1-based and counted from
// the moment the fault is registered. After a crash, every further call throws SimulatedCrash
// (a dead process does nothing more) until reset().
class FaultInjectingFileSystem : public FileSystem {
 public:
  explicit FaultInjectingFileSystem(FileSystem& base) : base_(base) {}

  // The nth next call of `op` does nothing and throws as the OS would with errno `err`.
  void fail_call(FsOp op, int nth, int err);
  // The process "dies" just before the nth next call of `op`. With partial_write, a write_file
  // first writes the first half of its data without fsync (a kill in the middle of write()).
  void crash_before(FsOp op, int nth, bool partial_write = false);
  // The process dies just before the nth next mutating call, whatever its kind.
  void crash_before_mutation(int nth, bool partial_write = false);
  // The nth next mutating call, whatever its kind, fails with errno `err`.
  void fail_mutation(int nth, int err);
  // Forgets all faults and the crashed state (counters keep running).
  void reset();

  int mutations();  // mutating calls that went through
  bool crashed();
  // One line per call that reached `base` ("rename a -> b"), for test diagnostics.
  std::vector<std::string> trace();

  void write_file(const std::string& path, const std::string& data) override;
  void fsync_file(const std::string& path) override;
  void fsync_dir(const std::string& dir) override;
  void rename(const std::string& from, const std::string& to) override;
  void link(const std::string& existing, const std::string& new_path) override;
  void remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  uint64_t file_size(const std::string& path) override;
  std::vector<std::string> list_dir(const std::string& dir) override;
  std::string read_file(const std::string& path) override;
  FileHash hash_file(const std::string& path,
                     FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm,
                     const BlockDigests* known = nullptr) override;

 private:
  struct Fault {
    bool any_mutation;  // match the nth mutating call instead of `op`
    FsOp op;
    int at;             // absolute call count (per op, or of mutations) that triggers it
    bool crash;         // else fail with `err`
    int err;
    bool partial_write;
  };
  // Counts the call; throws if a fault matches. Returns true when a crash with partial_write
  // matched a write_file (the caller writes half, then throws via crash_now). Takes mu_.
  bool before(FsOp op, const std::string& what, const std::string& path);
  [[noreturn]] void crash_now(const std::string& what);

  FileSystem& base_;
  std::mutex mu_;  // guards everything below; never held while calling base_
  std::vector<Fault> faults_;
  int calls_[static_cast<int>(FsOp::kCount)] = {0};
  int mutations_ = 0;
  bool crashed_ = false;
  std::vector<std::string> trace_;
};

}  // namespace ddp::ckpt
