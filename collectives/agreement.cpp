#include "collectives/agreement.h"

#include <cstdint>
#include <exception>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {

void run_agreed(Communicator& comm, const std::string& phase, const std::function<void()>& fn) {
  ErrorKind kind = ErrorKind::kInternal;
  std::string message;
  bool failed = false;
  try {
    fn();
  } catch (const Error& e) {
    failed = true;
    kind = e.kind();
    message = e.what();
  } catch (const std::exception& e) {
    failed = true;
    message = e.what();
  }
  // Lowest failing rank, or size() if none failed.
  int64_t first_failed = failed ? comm.rank() : comm.size();
  comm.all_reduce(&first_failed, 1, DType::kInt64, ReduceOp::kMin);
  if (first_failed == comm.size()) return;

  const int root = static_cast<int>(first_failed);
  int64_t kind_code = static_cast<int64_t>(kind);
  comm.broadcast(&kind_code, 1, DType::kInt64, root);
  message = broadcast_string(comm, message, root);
  if (comm.size() > 1) message = fmt::format("rank {}: {}", root, message);
  throw AgreedError(static_cast<ErrorKind>(kind_code), fmt::format("{}: {}", phase, message));
}

}  // namespace ddp
