// The one error model of ddp-runtime: a ddp::Error exception carrying a kind.
//
// Kinds are distinct on purpose (leveldb's Status): a loader must tell "corrupt, fall back"
// from "missing" from "I/O failed", and the launcher maps each kind to an exit code so that
// scripts and ddp-launch can react without parsing messages.
//
// Thread-safety: immutable after construction.
#pragma once

#include <stdexcept>
#include <string>

namespace ddp {

enum class ErrorKind {
  kInvalidArgument,  // bad config value, bad CLI flag, bad user input: the user must fix it
  kNotFound,         // a file or key that should exist does not
  kCorruption,       // data exists but fails validation (checksum, format)
  kIOError,          // the OS refused a read/write (ENOSPC, EACCES, EIO)
  kTimeout,          // a collective or wait passed its deadline
  kCollective,       // MPI/NCCL/CUDA reported an error
  kMismatch,         // ranks disagree (model fingerprint, parameter hash)
  kNewerVersion,     // data written by a newer ddp-runtime (format, checksum algorithm)
  kInternal,         // a bug in ddp-runtime
};

// What a rank prints when it ends the whole job (a watchdog expiry, an abort): ddp-launch
// watches the job's stderr for it to bound a launcher that cannot finish ending the job.
constexpr const char* kAbortNotice = "aborting all ranks";

// Process exit codes, one per kind. Documented in README.md ("Exit codes").
constexpr int kExitOk = 0;
constexpr int kExitInternal = 1;
constexpr int kExitInvalidInput = 2;   // kInvalidArgument, kNotFound
constexpr int kExitDistributed = 3;    // kTimeout, kCollective, kMismatch
constexpr int kExitIO = 4;             // kIOError, kCorruption
constexpr int kExitNewerVersion = 5;   // kNewerVersion: upgrade, do not discard the file

const char* error_kind_name(ErrorKind kind);
int exit_code_for(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace ddp
