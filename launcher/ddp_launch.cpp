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
//
// Bounded failure across hosts (docs/multi-node.md):
// - The job runs in its own process group with stdin from /dev/null; its stderr passes
//   through ddp-launch, which watches for a rank's "aborting all ranks" line
//   (ddp::kAbortNotice). From then on the job has --abort-grace seconds to exit;
//   past that (mpirun waiting forever for a daemon across a partition) its process group gets
//   SIGTERM, then SIGKILL 3 s later, and the attempt counts as exit 3 (distributed failure).
// - --network-timeout S sets Open MPI's out-of-band TCP keepalive (OMPI_MCA_oob_tcp_keepalive_*,
//   unless already set) so that mpirun and each host's daemon notice a host that stopped
//   answering within about S seconds and end the job, on every host.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Copies the job's stderr to ours line by line and records when a rank announced that it is
// aborting the job. Returns at end of file (every writer gone).
void relay_stderr(int fd, std::atomic<double>* abort_seen_at) {
  std::string line;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) {
      line.push_back(buf[i]);
      if (buf[i] != '\n') continue;
      if (abort_seen_at->load() == 0 && line.find(ddp::kAbortNotice) != std::string::npos) {
        abort_seen_at->store(now_s());
      }
      (void)!write(STDERR_FILENO, line.data(), line.size());
      line.clear();
    }
  }
  if (!line.empty()) (void)!write(STDERR_FILENO, line.data(), line.size());
  close(fd);
}

extern "C" void forward_signal(int sig) {
  g_terminate.store(sig);
  const pid_t child = g_child.load();
  if (child > 0) kill(child, SIGUSR1);
}

// Runs the job once. `abort_grace_s`: see the file comment.
int run_once(const std::vector<std::string>& command, double abort_grace_s,
             int preemption_exit_code) {
  std::vector<char*> argv;
  for (const auto& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int err_pipe[2];
  if (pipe(err_pipe) != 0) {
    std::perror("ddp-launch: pipe");
    return ddp::kExitInternal;
  }
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("ddp-launch: fork");
    return ddp::kExitInternal;
  }
  if (pid == 0) {
    // The job gets default dispositions; it installs its own handlers. Its own process
    // group, so that a job that will not exit can be ended with everything it started here.
    setpgid(0, 0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    // No terminal input: a background process group reading the terminal would be stopped
    // (mpirun forwards stdin to rank 0), and a restarted job has nothing to read anyway.
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      dup2(null_fd, STDIN_FILENO);
      close(null_fd);
    }
    dup2(err_pipe[1], STDERR_FILENO);
    close(err_pipe[0]);
    close(err_pipe[1]);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "ddp-launch: cannot run '%s': %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);  // also here: no race with the kill below
  close(err_pipe[1]);
  std::atomic<double> abort_seen_at{0};
  std::thread relay(relay_stderr, err_pipe[0], &abort_seen_at);
  g_child.store(pid);
  if (g_terminate.load()) kill(pid, SIGUSR1);  // a signal arrived between restarts
  int status = 0;
  double term_sent_at = 0;  // 0: not terminated by us
  bool kill_sent = false;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) {
      std::perror("ddp-launch: waitpid");
      break;
    }
    const double seen = abort_seen_at.load();
    const double now = now_s();
    if (seen > 0 && term_sent_at == 0 && now - seen > abort_grace_s) {
      std::fprintf(stderr,
                   "ddp-launch: the job has not exited %.0f s after a rank aborted it (a host "
                   "unreachable?): terminating it\n",
                   abort_grace_s);
      kill(-pid, SIGTERM);
      term_sent_at = now;
    } else if (term_sent_at > 0 && !kill_sent && now - term_sent_at > 3.0) {
      kill(-pid, SIGKILL);
      kill_sent = true;
    }
    poll(nullptr, 0, 50);
  }
  g_child.store(0);
  // Whatever the job left in our process group still holds the pipe (a daemon that did
  // not follow its mpirun): it gets the same end, so the relay reaches end of file.
  kill(-pid, SIGKILL);
  relay.join();
  if (term_sent_at > 0) return ddp::kExitDistributed;
  if (WIFEXITED(status)) {
    const int rc = WEXITSTATUS(status);
    // Not a ddp-train code (README "Exit codes"): mpirun's own. It exits with a rank's signal
    // number when a rank was killed (a dead host takes its ranks with it), and with an ORTE
    // error (200-255) when it lost a host's daemon (a partition) or could not start one. For
    // the user and for the restart policy both are a distributed failure.
    const bool ours = rc <= ddp::kExitNewerVersion || rc == preemption_exit_code || rc == 127 ||
                      (rc > 128 && rc < 200);  // 128+N: a shell reporting signal N
    if (!ours) {
      std::fprintf(stderr,
                   "ddp-launch: mpirun exited with %d, not a ddp-train code: a rank was killed "
                   "(signal %d?) or a host died, became unreachable or could not be started; "
                   "counted as exit %d\n",
                   rc, rc, ddp::kExitDistributed);
      return ddp::kExitDistributed;
    }
    return rc;
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return ddp::kExitInternal;
}

// Open MPI's out-of-band keepalive, so that a silent host ends the job in about `seconds`.
void set_network_timeout(double seconds) {
  if (seconds <= 0) return;
  const int idle = std::max(1, static_cast<int>(seconds / 2));
  const int probes = 3;
  const int interval = std::max(1, static_cast<int>(seconds / 6));
  setenv("OMPI_MCA_oob_tcp_keepalive_time", std::to_string(idle).c_str(), /*overwrite=*/0);
  setenv("OMPI_MCA_oob_tcp_keepalive_intvl", std::to_string(interval).c_str(), 0);
  setenv("OMPI_MCA_oob_tcp_keepalive_probes", std::to_string(probes).c_str(), 0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ddp-launch: run a ddp-train job and restart it after preemption or failure"};
  int max_restarts = 3;
  double backoff_s = 5.0;
  double max_backoff_s = 300.0;
  double abort_grace_s = 10.0;
  double network_timeout_s = 30.0;
  int preemption_exit_code = 75;
  std::vector<std::string> command;
  app.add_option("--max-restarts", max_restarts, "restarts allowed (0: run once)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backoff", backoff_s, "first back-off before a restart, seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-backoff", max_backoff_s, "back-off cap, seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--abort-grace", abort_grace_s,
                 "seconds the job may take to exit after a rank aborts it; then it is killed")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--network-timeout", network_timeout_s,
                 "a host silent this long ends the job (Open MPI out-of-band keepalive; 0: "
                 "leave Open MPI's settings)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--preemption-exit-code", preemption_exit_code,
                 "the job's preemption.exit_code, if not 75 (any other code that is not "
                 "ddp-train's is mpirun's: counted as exit 3)")
      ->check(CLI::Range(5, 125));
  app.add_option("command", command, "the job: mpirun ... ddp-train ...")->required();
  app.allow_extras(false);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return e.get_exit_code() == 0 ? ddp::kExitOk : ddp::kExitInvalidInput;
  }

  set_network_timeout(network_timeout_s);
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
    const int rc = run_once(command, abort_grace_s, preemption_exit_code);
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
