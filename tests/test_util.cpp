#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "collectives/agreement.h"

namespace ddp::test {

MpiCommunicator& world() {
  static MpiCommunicator comm(CommunicatorOptions{60.0});
  return comm;
}

std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  const char* base_env = std::getenv("DDP_TEST_TMPDIR");
  std::string path;
  if (world().rank() == 0) {
    fs::path base = base_env ? fs::path(base_env) : fs::temp_directory_path();
    path = (base / fmt::format("ddp-test-{}-{}-np{}", tag, ::getpid(), world().size())).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  path = broadcast_string(world(), path, 0);
  world().barrier();
  return path;
}

// This test process is itself an MPI process (singleton or under mpirun): the variables Open
// MPI and PMIx put in its environment would make an mpirun started from here try to join this
// process's session and fail at once. Children must start clean (MPI was initialised already).
static void drop_mpi_environment() {
  std::vector<std::string> names;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('='));
    for (const char* prefix : {"OMPI_", "PMIX_", "OPAL_", "ORTE_"}) {
      if (name.rfind(prefix, 0) == 0 && name.find("ALLOW_RUN_AS_ROOT") == std::string::npos) {
        names.push_back(name);
      }
    }
  }
  for (const auto& n : names) unsetenv(n.c_str());
}

CommandResult run_command(const std::string& command, int timeout_s) {
  drop_mpi_environment();
  const std::string wrapped =
      fmt::format("timeout -k 5 {} bash -c '{}' 2>&1", timeout_s, [&] {
        std::string escaped;
        for (char c : command) escaped += (c == '\'') ? std::string("'\\''") : std::string(1, c);
        return escaped;
      }());
  CommandResult result;
  FILE* pipe = popen(wrapped.c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string bin_path(const std::string& name) {
  const char* dir = std::getenv("DDP_BIN_DIR");
  return fmt::format("{}/{}", dir ? dir : ".", name);
}

std::string source_path(const std::string& relative) {
  const char* dir = std::getenv("DDP_SOURCE_DIR");
  return fmt::format("{}/{}", dir ? dir : ".", relative);
}

}  // namespace ddp::test
