// Test-only fault injection, driven by environment variables so that multi-process tests can
// force rare paths cheaply (STYLE.md: "test-only knobs"). Inert unless the variable is set.
//
//   DDP_FAULT_STALL="<rank>:<step>:<seconds>"  rank <rank> sleeps <seconds> before optimizer
//                                              step <step>, as a hung or descheduled rank would.
//   DDP_FAULT_SLOW_SNAPSHOT="<seconds>"          an async save's background thread sleeps
//                                              <seconds> before its part of the snapshot copy,
//                                              so the training thread reaches its next update
//                                              first (Checkpointer::before_update must copy).
//   DDP_FAULT_PAUSE="<where>:<rank>:<seconds>[:<step>]"
//                                              rank <rank> sleeps <seconds> the first time it
//                                              reaches <where> at global step >= <step>
//                                              (default 0): "save" (before its part of a
//                                              save), "resume" (before the checkpoint
//                                              broadcast) or "gather" (ZeRO-1: before the
//                                              parameter all-gather of that step), announcing
//                                              it on stderr, so a test can cut the network
//                                              mid-save or mid-resume, or stall a collective.
#pragma once

#include <cstdint>

namespace ddp {

void maybe_inject_stall(int rank, int64_t step);
void maybe_delay_background_snapshot(int rank);
void maybe_pause_at(const char* where, int rank, int64_t step);

}  // namespace ddp
