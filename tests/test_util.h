// Shared test helpers. The MPI world and its communicator live for the whole test binary
// (tests/test_main.cpp); tests reach them through world().
#pragma once

#include <string>
#include <vector>

#include "collectives/mpi_communicator.h"

namespace ddp::test {

// The communicator over all ranks of this test run (MPI_COMM_WORLD duplicate, timeout 60 s).
MpiCommunicator& world();

// A fresh empty directory, unique per test and rank-shared (rank 0 creates, all agree).
std::string temp_dir(const std::string& tag);

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string output;  // stdout and stderr together
};

// Runs a shell command with a wall-clock bound (seconds); output captured.
CommandResult run_command(const std::string& command, int timeout_s = 120);

// <build>/bin/<name> and <source>/<relative> (from DDP_BIN_DIR / DDP_SOURCE_DIR set by ctest).
std::string bin_path(const std::string& name);
std::string source_path(const std::string& relative);

}  // namespace ddp::test
