#include "collectives/error.h"

namespace ddp {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kNotFound: return "not found";
    case ErrorKind::kCorruption: return "corruption";
    case ErrorKind::kIOError: return "I/O error";
    case ErrorKind::kTimeout: return "timeout";
    case ErrorKind::kCollective: return "collective error";
    case ErrorKind::kMismatch: return "rank mismatch";
    case ErrorKind::kNewerVersion: return "newer version";
    case ErrorKind::kInternal: return "internal error";
  }
  return "unknown error";
}

int exit_code_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kNotFound: return kExitInvalidInput;
    case ErrorKind::kTimeout:
    case ErrorKind::kCollective:
    case ErrorKind::kMismatch: return kExitDistributed;
    case ErrorKind::kIOError:
    case ErrorKind::kCorruption: return kExitIO;
    case ErrorKind::kNewerVersion: return kExitNewerVersion;
    case ErrorKind::kInternal: return kExitInternal;
  }
  return kExitInternal;
}

}  // namespace ddp
