#include <fmt/format.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"

namespace ddp {

const char* task_name(Task task) {
  switch (task) {
    case Task::kClassification: return "classification";
    case Task::kRegression: return "regression";
    case Task::kLanguageModel: return "language_model";
  }
  return "unknown";
}

TensorDataset::TensorDataset(torch::Tensor x, torch::Tensor y, DatasetInfo info)
    : x_(std::move(x)), y_(std::move(y)), info_(std::move(info)) {
  if (!x_.defined() || !y_.defined() || x_.dim() == 0 || y_.dim() == 0) {
    throw Error(ErrorKind::kInvalidArgument,
                "TensorDataset: x and y must be defined tensors with a sample dimension");
  }
  if (x_.size(0) != y_.size(0)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("TensorDataset: x has {} samples, y has {}", x_.size(0), y_.size(0)));
  }
}

Batch TensorDataset::get(const std::vector<int64_t>& indices) const {
  const int64_t n = size();
  for (int64_t i : indices) {
    if (i < 0 || i >= n) {
      throw Error(ErrorKind::kInternal,
                  fmt::format("TensorDataset::get: index {} outside [0, {})", i, n));
    }
  }
  // from_blob does not copy; clone() so the index tensor owns its memory.
  const torch::Tensor index =
      indices.empty()
          ? torch::empty({0}, torch::kLong)
          : torch::from_blob(const_cast<int64_t*>(indices.data()),
                             {static_cast<int64_t>(indices.size())}, torch::kLong)
                .clone();
  return Batch{x_.index_select(0, index), y_.index_select(0, index)};
}

}  // namespace ddp
