// ZeRO stage 1: which rank owns (keeps the optimizer state of, and updates) each parameter.
//
// Parameters are assigned whole, never split: each piece of optimizer state then lives on
// exactly one rank, so a checkpoint gathers it with the sharded save's bounded rounds as it
// stands, resume hands each rank only the tensors it owns, and the update is the unmodified
// LibTorch optimizer's (SGD, Adam, AdamW: bit-for-bit stage 0's arithmetic). The price is
// balance: a rank's share can exceed total / N by up to the largest parameter.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

namespace ddp {

// Owner rank of each parameter: largest first onto the least-loaded rank (by element count;
// ties to the lower index and rank), so every rank computes the same answer.
// REQUIRES: world_size >= 1, numels >= 0.
std::vector<int> partition_parameters(const std::vector<int64_t>& numels, int world_size);

// Elements each rank owns under `owner`.
std::vector<int64_t> owned_elements(const std::vector<int64_t>& numels,
                                    const std::vector<int>& owner, int world_size);

}  // namespace ddp
