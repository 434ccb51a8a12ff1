// Tensor overloads of the Communicator collectives (LibTorch side of the seam).
// REQUIRES for all: the tensor is contiguous and lives where the backend expects it (host for
// MPI, the communicator's GPU for NCCL). Results are written in place.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "collectives/communicator.h"

namespace ddp {

// Throws ddp::Error(kInvalidArgument) for dtypes the collectives do not carry.
DType to_dtype(torch::ScalarType type);

void broadcast(Communicator& comm, const torch::Tensor& tensor, int root);
void all_reduce(Communicator& comm, const torch::Tensor& tensor, ReduceOp op);
std::unique_ptr<Work> all_reduce_async(Communicator& comm, const torch::Tensor& tensor,
                                       ReduceOp op);

// The model's parameters then buffers, by state_dict name: the state every rank must agree on
// (DdpEngine) and the state a checkpoint holds (state_io).
std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& model);

// 64-bit hash (xxh3) of the tensors' names, shapes and dtypes, in order.
uint64_t fingerprint(const std::vector<std::pair<std::string, torch::Tensor>>& named);
// 64-bit hash (xxh3) of the tensors' bytes, in order (copied to host if needed).
uint64_t content_hash(const std::vector<torch::Tensor>& tensors);

// All-gathers one uint64 per rank and returns the ranks whose value differs from rank 0's.
std::vector<int> ranks_differing_from_root(Communicator& comm, uint64_t value);

}  // namespace ddp
