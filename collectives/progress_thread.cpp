#include "collectives/progress_thread.h"

#include <chrono>
#include <thread>

namespace ddp {

ProgressThread& ProgressThread::get() {
  static ProgressThread* instance = new ProgressThread();  // never destroyed (see the header)
  return *instance;
}

ProgressThread::ProgressThread() { std::thread([this] { run(); }).detach(); }

void ProgressThread::add(std::shared_ptr<Progressed> p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
}

void ProgressThread::run() {
  std::vector<std::shared_ptr<Progressed>> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (active.empty()) cv_.wait(lock, [&] { return !queue_.empty(); });
      for (auto& p : queue_) active.push_back(std::move(p));
      queue_.clear();
    }
    for (size_t i = 0; i < active.size();) {
      int flag = 0;
      const int rc = MPI_Test(&active[i]->request, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) active[i]->error.store(rc);
      if (flag || rc != MPI_SUCCESS) {
        active[i]->done.store(true, std::memory_order_release);
        active[i] = std::move(active.back());
        active.pop_back();
      } else {
        ++i;
      }
    }
    if (!active.empty()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace ddp
