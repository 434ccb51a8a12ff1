// Test-only fault injection, driven by environment variables so that multi-process tests can
// force rare paths cheaply (STYLE.md: "test-only knobs"). Inert unless the variable is set.
//
//   DDP_FAULT_STALL="<rank>:<step>:<seconds>"  rank <rank> sleeps <seconds> before optimizer
//                                              step <step>, as a hung or descheduled rank would.
#pragma once

#include <cstdint>

namespace ddp {

void maybe_inject_stall(int rank, int64_t step);

}  // namespace ddp
