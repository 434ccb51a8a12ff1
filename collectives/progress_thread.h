// The MPI progress thread (opt-in, see mpi_communicator.h): one thread per process that
// calls MPI_Test on the non-blocking requests handed to it, every 50 us while any is in
// flight, so that Open MPI's TCP transport moves them while no other thread is inside MPI.
//
// Thread-safety: add() from any thread; only the progress thread calls MPI_Test on a request
// it was given, and publishes completion through Progressed::done (release/acquire). The
// thread is detached and runs until exit: MPI may be finalised while it sleeps with nothing in
// flight, and it never calls MPI then.
#pragma once

#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

namespace ddp {

// A request handed to the progress thread.
struct Progressed {
  MPI_Request request = MPI_REQUEST_NULL;
  std::atomic<bool> done{false};
  std::atomic<int> error{MPI_SUCCESS};  // MPI_Test's code when it failed
};

class ProgressThread {
 public:
  static ProgressThread& get();  // started on first use, never destroyed
  void add(std::shared_ptr<Progressed> p);

 private:
  ProgressThread();
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Progressed>> queue_;  // guarded by mu_
};

}  // namespace ddp
