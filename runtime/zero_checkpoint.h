// ZeRO stage 1 and checkpoints: a stage-1 checkpoint has the same layout as a stage-0 one
// (one "optimizer/<param>/<field>" dataset per parameter and field), so it resumes at any
// world size and either stage with no conversion.
//
// Save: each rank describes the optimizer state it holds (its own parameters'); the
// descriptions are exchanged so that every rank lists the same tensors in the same order,
// each with its holder as TensorSource::owner. The sharded save then brings each tensor from
// its holder to rank 0 in its bounded rounds.
// Resume: rank 0 reads the file once; the model's tensors go to every rank, each optimizer
// tensor only to the rank that owns its parameter now (BroadcastOptions::destination).
//
// Thread-safety: the training thread; the exchange is collective over `control`.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "checkpoint/sharded_save.h"
#include "collectives/communicator.h"

namespace ddp {

// REQUIRES: `mine` is this rank's optimizer_sources(). Collective over `control`. Returns
// every rank's sources in rank order; the others' are descriptions (owner set, no data).
std::vector<ckpt::TensorSource> exchange_sharded_sources(Communicator& control,
                                                         std::vector<ckpt::TensorSource> mine);

// The destination of each checkpoint tensor under `owners` (trainable parameters in model
// order, as DdpEngine::owners()): "optimizer/<name>/<field>" -> the owner of <name>;
// everything else (and optimizer state of a parameter the model lacks) -> -1, every rank.
std::function<int(const std::string& path)> optimizer_destinations(
    const torch::nn::Module& model, const std::vector<int>& owners);

}  // namespace ddp
