// Watchdog: bounds blocking calls that cannot be cancelled (a blocking MPI collective whose
// peer died). A background thread checks the armed call's age; past the deadline it calls
// on_expire(what, elapsed_s) once, which is expected to end the process (MPI_Abort).
//
// Arming and disarming are lock-free (two atomic stores), so wrapping every collective costs
// nanoseconds. Only one call is armed at a time; nested Scopes keep the outer deadline.
//
// Thread-safety: Scope may be used from any one thread at a time; the callback runs on the
// watchdog thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace ddp {

class Watchdog {
 public:
  using OnExpire = std::function<void(const char* what, double elapsed_s)>;

  // timeout_s: deadline of one armed call, seconds (> 0).
  Watchdog(double timeout_s, OnExpire on_expire);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  class Scope {
   public:
    // `what` must outlive the scope (a string literal).
    Scope(Watchdog& dog, const char* what);
    ~Scope();

   private:
    Watchdog& dog_;
    bool outer_;
  };

  double timeout_s() const { return timeout_s_; }

 private:
  void run();

  const double timeout_s_;
  OnExpire on_expire_;
  std::atomic<int64_t> armed_at_ns_{0};  // steady-clock ns; 0 = disarmed
  std::atomic<const char*> what_{nullptr};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace ddp
