#include "runtime/stop_signal.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <map>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {
namespace {

std::atomic<int> g_last_signal{0};
std::atomic<int> g_count{0};
std::vector<int> g_installed;

extern "C" void on_stop_signal(int sig) {
  g_last_signal.store(sig, std::memory_order_relaxed);
  g_count.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

void StopSignal::install(const std::vector<int>& signals) {
  uninstall();
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : signals) {
    if (sigaction(s, &sa, nullptr) != 0) {
      throw Error(ErrorKind::kInvalidArgument, fmt::format("cannot handle signal {}", s));
    }
    g_installed.push_back(s);
  }
}

void StopSignal::uninstall() {
  for (int s : g_installed) std::signal(s, SIG_DFL);
  g_installed.clear();
}

bool StopSignal::requested() { return g_count.load(std::memory_order_relaxed) > 0; }
int StopSignal::last_signal() { return g_last_signal.load(std::memory_order_relaxed); }
int StopSignal::count() { return g_count.load(std::memory_order_relaxed); }
void StopSignal::reset() {
  g_count.store(0);
  g_last_signal.store(0);
}

std::vector<int> parse_signal_list(const std::string& text) {
  static const std::map<std::string, int> kByName{
      {"TERM", SIGTERM}, {"INT", SIGINT},   {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
      {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"XCPU", SIGXCPU}};
  std::vector<int> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string name;
    for (size_t i = pos; i < comma; ++i) {
      if (!std::isspace(static_cast<unsigned char>(text[i]))) {
        name += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
      }
    }
    if (name.rfind("SIG", 0) == 0) name = name.substr(3);
    if (!name.empty()) {
      auto it = kByName.find(name);
      if (it == kByName.end()) {
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("preemption.signals: unknown signal '{}' (known: SIGTERM, "
                                "SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGQUIT, SIGXCPU)",
                                name));
      }
      if (std::find(out.begin(), out.end(), it->second) == out.end()) out.push_back(it->second);
    }
    pos = comma + 1;
  }
  return out;
}

}  // namespace ddp
