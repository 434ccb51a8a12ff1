#include "runtime/fault_injection.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace ddp {

void maybe_inject_stall(int rank, int64_t step) {
  static const char* spec = std::getenv("DDP_FAULT_STALL");
  if (!spec) return;
  int r = -1;
  long long s = -1;
  double seconds = 0;
  if (std::sscanf(spec, "%d:%lld:%lf", &r, &s, &seconds) != 3) return;
  if (r != rank || s != step) return;
  std::fprintf(stderr, "ddp-train: [fault injection] rank %d stalls %.1f s at step %lld\n", rank,
               seconds, s);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

void maybe_delay_background_snapshot(int rank) {
  const char* spec = std::getenv("DDP_FAULT_SLOW_SNAPSHOT");  // read each time: tests set it
  if (!spec) return;
  const double seconds = std::atof(spec);
  if (seconds <= 0) return;
  static bool logged = false;
  if (!logged && rank == 0) {
    std::fprintf(stderr, "ddp-train: [fault injection] async saves copy %.2f s late\n", seconds);
    logged = true;
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

void maybe_pause_at(const char* where, int rank, int64_t step) {
  static const char* spec = std::getenv("DDP_FAULT_PAUSE");
  static bool done = false;
  if (!spec || done) return;
  char at[16] = {0};
  int r = -1;
  double seconds = 0;
  long long from_step = 0;
  const int n = std::sscanf(spec, "%15[a-z]:%d:%lf:%lld", at, &r, &seconds, &from_step);
  if (n < 3 || r != rank || std::strcmp(at, where) != 0 || step < from_step) return;
  done = true;
  std::fprintf(stderr, "ddp-train: [fault injection] rank %d pauses %.1f s at %s (step %lld)\n",
               rank, seconds, where, static_cast<long long>(step));
  std::fflush(stderr);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

}  // namespace ddp
