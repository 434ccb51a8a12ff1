// Collective agreement on success: the pattern that keeps one rank's failure from leaving
// the others waiting in a collective forever.
//
// run_agreed(comm, phase, fn) runs fn on every rank, then all ranks exchange one status word.
// If any rank failed, every rank throws the same ddp::Error: the kind and message of the
// lowest failing rank, prefixed by that rank's number. REQUIRES: every rank calls it with the
// same phase at the same point; fn must not itself call collectives that other ranks skip.
#pragma once

#include <functional>
#include <string>

#include "collectives/communicator.h"
#include "collectives/error.h"

namespace ddp {

// Thrown by run_agreed: every rank holds the same error, so each may exit on its own (no
// MPI_Abort needed) and only rank 0 needs to print it.
class AgreedError : public Error {
 public:
  AgreedError(ErrorKind kind, const std::string& message) : Error(kind, message) {}
};

void run_agreed(Communicator& comm, const std::string& phase, const std::function<void()>& fn);

}  // namespace ddp
