// Preemption signals (Slurm sends SIGTERM, or SIGUSR1 with --signal; a user presses Ctrl-C).
//
// install() sets async-signal-safe handlers that only record that a stop was asked for. The
// Trainer turns the request into a coordinated stop: at the next step boundary all ranks
// agree with one small all-reduce (a signal delivered to any single rank stops every rank at
// the same step), save a checkpoint, wait for any async save, and exit with
// preemption.exit_code. Further signals during the save only set the flag again.
//
// Thread-safety: requested()/reset() are lock-free and may be called from any thread.
#pragma once

#include <string>
#include <vector>

namespace ddp {

class StopSignal {
 public:
  // Installs handlers for the given signals (e.g. SIGTERM, SIGINT, SIGUSR1). Replaces
  // handlers installed by an earlier call.
  static void install(const std::vector<int>& signals);
  static void uninstall();
  static bool requested();
  static int last_signal();  // 0 if none
  static int count();        // signals received since reset()
  static void reset();
};

// "SIGTERM,SIGINT,SIGUSR1" (names with or without SIG, case-insensitive) -> signal numbers.
// Throws ddp::Error(kInvalidArgument) naming an unknown signal.
std::vector<int> parse_signal_list(const std::string& text);

}  // namespace ddp
