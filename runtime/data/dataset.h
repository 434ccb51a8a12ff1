// Datasets: indexable collections of (x, y) samples held in memory as tensors.
//
// Every built-in dataset is deterministic: synthetic ones from the seed, file-backed ones from
// the file. get() gathers the given indices into one batch; it is const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "runtime/config.h"

namespace ddp {

enum class Task {
  kClassification,  // y: int64 class ids [B]; loss: cross-entropy
  kRegression,      // y: float [B, num_outputs]; loss: mean squared error
  kLanguageModel,   // x, y: int64 tokens [B, T] (y is x shifted by one); loss: cross-entropy
};

const char* task_name(Task task);

struct DatasetInfo {
  Task task = Task::kClassification;
  std::vector<int64_t> input_shape;  // one sample's x shape, e.g. {64}, {1, 28, 28}, {T}
  int64_t num_outputs = 0;           // classes, regression targets, or vocabulary size
};

struct Batch {
  torch::Tensor x;
  torch::Tensor y;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual const DatasetInfo& info() const = 0;
  // REQUIRES: every index in [0, size()).
  virtual Batch get(const std::vector<int64_t>& indices) const = 0;
};

// A dataset over in-memory tensors: x [N, ...], y [N, ...].
class TensorDataset final : public Dataset {
 public:
  TensorDataset(torch::Tensor x, torch::Tensor y, DatasetInfo info);
  int64_t size() const override { return x_.size(0); }
  const DatasetInfo& info() const override { return info_; }
  Batch get(const std::vector<int64_t>& indices) const override;
  const torch::Tensor& x() const { return x_; }
  const torch::Tensor& y() const { return y_; }

 private:
  torch::Tensor x_, y_;
  DatasetInfo info_;
};

struct DataSplits {
  std::shared_ptr<Dataset> train;
  std::shared_ptr<Dataset> val;  // may be empty (size 0) but never null
};

// Builds train and validation sets from config.data. Throws ddp::Error: kNotFound for a
// missing file (naming it), kInvalidArgument for malformed content (naming file and line or
// offset) or an unknown dataset name.
DataSplits make_datasets(const DataConfig& config, int64_t seed);

}  // namespace ddp
