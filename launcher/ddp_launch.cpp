// ddp-launch: runs a training job (normally `mpirun ... ddp-train ...`) and restarts it after
// a preemption or a failure, resuming from the newest valid checkpoint.
//
//   ddp-launch [--max-restarts 3] [--backoff 5] [--max-backoff 300] -- \
//       mpirun -np 4 build/bin/ddp-train --config configs/default.yaml
//
// Policy: exit 0 -> done. Exit 2 (invalid input: config, data, flags) -> not retried: the
// same input would fail again. Any other exit (75 = preemption.exit_code, 3 = a rank died or
// timed out, a signal) -> restart with `--resume auto` appended, after a back-off that doubles
// from --backoff up to --max-backoff seconds, at most --max-restarts times.
// Signals: SIGTERM/SIGINT/SIGUSR1 to ddp-launch are passed on to the job as SIGUSR1 (Open MPI's
// mpirun forwards SIGUSR1 to every rank, while it answers SIGTERM by killing them), so the ranks
// stop together and save; ddp-launch then exits with the job's code and does not restart.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "collectives/error.h"

namespace {

std::atomic<pid_t> g_child{0};
std::atomic<int> g_terminate{0};

extern "C" void forward_signal(int sig) {
  g_terminate.store(sig);
  const pid_t child = g_child.load();
  if (child > 0) kill(child, SIGUSR1);
}

int run_once(const std::vector<std::string>& command) {
  std::vector<char*> argv;
  for (const auto& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("ddp-launch: fork");
    return ddp::kExitInternal;
  }
  if (pid == 0) {
    // The job gets default dispositions; it installs its own handlers.
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "ddp-launch: cannot run '%s': %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  g_child.store(pid);
  if (g_terminate.load()) kill(pid, SIGUSR1);  // a signal arrived between restarts
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  g_child.store(0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return ddp::kExitInternal;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ddp-launch: run a ddp-train job and restart it after preemption or failure"};
  int max_restarts = 3;
  double backoff_s = 5.0;
  double max_backoff_s = 300.0;
  std::vector<std::string> command;
  app.add_option("--max-restarts", max_restarts, "restarts allowed (0: run once)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backoff", backoff_s, "first back-off before a restart, seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-backoff", max_backoff_s, "back-off cap, seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("command", command, "the job: mpirun ... ddp-train ...")->required();
  app.allow_extras(false);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return e.get_exit_code() == 0 ? ddp::kExitOk : ddp::kExitInvalidInput;
  }

  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) sigaction(s, &sa, nullptr);

  bool resume_added = false;
  for (const auto& a : command) resume_added = resume_added || a == "--resume";
  double backoff = backoff_s;
  for (int attempt = 0;; ++attempt) {
    std::fprintf(stderr, "ddp-launch: attempt %d of %d\n", attempt + 1, max_restarts + 1);
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = run_once(command);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "ddp-launch: attempt %d ended with exit code %d after %.1f s\n",
                 attempt + 1, rc, secs);
    if (rc == ddp::kExitOk) return rc;
    if (g_terminate.load()) {
      std::fprintf(stderr, "ddp-launch: stopped by signal %d; not restarting\n", g_terminate.load());
      return rc;
    }
    if (rc == ddp::kExitInvalidInput || rc == 127) {
      std::fprintf(stderr, "ddp-launch: the job rejected its input (exit %d); not restarting\n", rc);
      return rc;
    }
    if (attempt >= max_restarts) {
      std::fprintf(stderr, "ddp-launch: giving up after %d restart(s)\n", max_restarts);
      return rc;
    }
    if (!resume_added) {
      command.push_back("--resume");
      command.push_back("auto");
      resume_added = true;
    }
    std::fprintf(stderr, "ddp-launch: restarting in %.1f s with --resume auto\n", backoff);
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(backoff);
    while (std::chrono::steady_clock::now() < until && !g_terminate.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (g_terminate.load()) return rc;
    backoff = std::min(max_backoff_s, backoff * 2);
  }
}
