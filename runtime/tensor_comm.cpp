#include "runtime/tensor_comm.h"

#include <torch/torch.h>
#include "checkpoint/xxh3.h"

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {

DType to_dtype(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return DType::kFloat32;
    case torch::kFloat64: return DType::kFloat64;
    case torch::kFloat16: return DType::kFloat16;
    case torch::kBFloat16: return DType::kBFloat16;
    case torch::kInt32: return DType::kInt32;
    case torch::kInt64: return DType::kInt64;
    case torch::kUInt8:
    case torch::kBool: return DType::kUInt8;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("collectives do not support tensors of dtype {}",
                              c10::toString(type)));
  }
}

static void require_contiguous(const torch::Tensor& t, const char* what) {
  if (!t.is_contiguous()) {
    throw Error(ErrorKind::kInvalidArgument, fmt::format("{}: tensor must be contiguous", what));
  }
}

void broadcast(Communicator& comm, const torch::Tensor& tensor, int root) {
  require_contiguous(tensor, "broadcast");
  comm.broadcast(tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                 to_dtype(tensor.scalar_type()), root);
}

void all_reduce(Communicator& comm, const torch::Tensor& tensor, ReduceOp op) {
  require_contiguous(tensor, "all_reduce");
  comm.all_reduce(tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                  to_dtype(tensor.scalar_type()), op);
}

std::unique_ptr<Work> all_reduce_async(Communicator& comm, const torch::Tensor& tensor,
                                       ReduceOp op) {
  require_contiguous(tensor, "all_reduce_async");
  return comm.all_reduce_async(tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                               to_dtype(tensor.scalar_type()), op);
}

std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

uint64_t fingerprint(const std::vector<std::pair<std::string, torch::Tensor>>& named) {
  std::string text;
  for (const auto& [name, t] : named) {
    text += name;
    text += ':';
    for (int64_t d : t.sizes()) text += fmt::format("{},", d);
    text += c10::toString(t.scalar_type());
    text += ';';
  }
  return XXH3_64bits(text.data(), text.size());
}

uint64_t content_hash(const std::vector<torch::Tensor>& tensors) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const auto& t : tensors) {
    torch::Tensor host = t.detach().to(torch::kCPU).contiguous();
    XXH3_64bits_update(state, host.data_ptr(), host.numel() * host.element_size());
  }
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return h;
}

std::vector<int> ranks_differing_from_root(Communicator& comm, uint64_t value) {
  std::vector<uint64_t> all(static_cast<size_t>(comm.size()));
  comm.all_gather(&value, all.data(), 1, DType::kInt64);
  std::vector<int> differing;
  for (int r = 1; r < comm.size(); ++r) {
    if (all[r] != all[0]) differing.push_back(r);
  }
  return differing;
}

}  // namespace ddp
