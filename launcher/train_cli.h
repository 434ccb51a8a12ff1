// The ddp-train command line, as a library function so that a user's executable can register
// its own models and then behave exactly like ddp-train:
//
//   mpirun -np N ddp-train --config configs/default.yaml [--set key=value ...] [--summary F]
//
// Returns the process exit code (collectives/error.h lists them). Initialises and finalises
// MPI itself; works under mpirun and as a singleton.
#pragma once

namespace ddp {

int train_cli_main(int argc, char** argv);

}  // namespace ddp
