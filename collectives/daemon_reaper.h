// The last resort of a rank that is ending the job: make sure its host's launcher daemon goes
// too, when the network cannot carry the abort.
//
// MPI_Abort asks the local Open MPI daemon (orted) to report to mpirun, and mpirun to kill the
// job everywhere. Across a partition that report never arrives: the ranks end, but the orted
// stays, retransmitting to an unreachable mpirun for many minutes — an orphan holding the
// node. arm_daemon_reaper() starts a detached process (its own session, so the daemon's
// clean-up does not take it) that waits `grace_s` and then, if the daemon is still there,
// ends it (SIGTERM, then SIGKILL 2 s later). When the abort works, the daemon is gone before
// the grace passes and the reaper only exits.
//
// Only a parent whose command name is Open MPI's daemon (orted, prted) is ever signalled:
// under srun, or a singleton run, this does nothing. DDP_NO_DAEMON_REAPER=1 turns it off.
// Async-signal-safe after the fork (the caller may be a watchdog thread of a busy process).
#pragma once

namespace ddp {

// Returns at once. At most one reaper per process (later calls do nothing).
void arm_daemon_reaper(double grace_s);

}  // namespace ddp
