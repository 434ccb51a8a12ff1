#include "collectives/watchdog.h"

#include <algorithm>
#include <chrono>

namespace ddp {

static int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Watchdog::Watchdog(double timeout_s, OnExpire on_expire)
    : timeout_s_(timeout_s), on_expire_(std::move(on_expire)) {
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Watchdog::Scope::Scope(Watchdog& dog, const char* what) : dog_(dog) {
  outer_ = dog_.armed_at_ns_.load(std::memory_order_relaxed) == 0;
  if (outer_) {
    dog_.what_.store(what, std::memory_order_relaxed);
    dog_.armed_at_ns_.store(now_ns(), std::memory_order_release);
  }
}

Watchdog::Scope::~Scope() {
  if (outer_) dog_.armed_at_ns_.store(0, std::memory_order_release);
}

void Watchdog::run() {
  // Poll at a tenth of the timeout (bounded to [10 ms, 1 s]): expiry is noticed within 10%.
  const auto period = std::chrono::duration<double>(std::clamp(timeout_s_ / 10.0, 0.01, 1.0));
  const auto timeout_ns = static_cast<int64_t>(timeout_s_ * 1e9);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, period);
    if (stop_) break;
    const int64_t armed = armed_at_ns_.load(std::memory_order_acquire);
    if (armed == 0) continue;
    const int64_t elapsed = now_ns() - armed;
    if (elapsed > timeout_ns) {
      const char* what = what_.load(std::memory_order_relaxed);
      lock.unlock();
      on_expire_(what ? what : "collective", static_cast<double>(elapsed) / 1e9);
      return;  // on_expire normally does not return; never fire twice
    }
  }
}

}  // namespace ddp
