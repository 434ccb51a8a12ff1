// cnn: per entry c of model.channels, Conv2d(3x3, padding 1) + ReLU + MaxPool2d(2), with a
// BatchNorm2d after the first convolution; then flatten (+ dropout) and Linear to the outputs.
//
// Parameter names: convs.<i>.weight (+ convs.<i>.bias for i > 0), norm.weight, norm.bias,
// head.weight, head.bias; buffers norm.running_mean, norm.running_var,
// norm.num_batches_tracked. The batch norm gives the model buffers, which the DDP engine
// broadcasts from rank 0.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/models/builtin_models.h"

namespace ddp::detail {
namespace {

class Cnn final : public Model {
 public:
  Cnn(const ModelConfig& config, const DatasetInfo& data)
      : dropout_(config.dropout),
        in_channels_(data.input_shape[0]),
        height_(data.input_shape[1]),
        width_(data.input_shape[2]) {
    convs_ = register_module("convs", torch::nn::ModuleList());
    int64_t channels = in_channels_, height = height_, width = width_;
    for (size_t i = 0; i < config.channels.size(); ++i) {
      const int64_t out = config.channels[i];
      // The first convolution's bias would be cancelled by the batch norm's mean subtraction.
      conv_layers_.emplace_back(
          torch::nn::Conv2dOptions(channels, out, 3).padding(1).bias(i > 0));
      convs_->push_back(conv_layers_.back());
      if (i == 0) norm_ = register_module("norm", torch::nn::BatchNorm2d(out));
      channels = out;
      height /= 2;  // MaxPool2d(2) floors
      width /= 2;
    }
    head_ = register_module("head", torch::nn::Linear(channels * height * width, data.num_outputs));
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    // Accept [B, C, H, W] or the same samples flattened ([B, C*H*W]).
    torch::Tensor h = x.reshape({x.size(0), in_channels_, height_, width_});
    for (size_t i = 0; i < conv_layers_.size(); ++i) {
      h = conv_layers_[i]->forward(h);
      if (i == 0) h = norm_->forward(h);
      h = torch::max_pool2d(torch::relu(h), 2);
    }
    h = h.flatten(1);
    if (dropout_ > 0.0) h = torch::dropout(h, dropout_, is_training());
    return head_->forward(h);
  }

 private:
  double dropout_;
  int64_t in_channels_, height_, width_;
  torch::nn::ModuleList convs_{nullptr};       // owns and names the convolutions
  std::vector<torch::nn::Conv2d> conv_layers_;  // the same layers, typed
  torch::nn::BatchNorm2d norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};

}  // namespace

std::shared_ptr<Model> make_cnn(const ModelConfig& config, const DatasetInfo& data) {
  if (data.task != Task::kClassification && data.task != Task::kRegression) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("needs a classification or regression dataset, got task ") +
                    task_name(data.task));
  }
  if (data.input_shape.size() != 3) {
    throw Error(ErrorKind::kInvalidArgument,
                "needs image samples with input_shape {C, H, W}, the dataset has " +
                    shape_string(data.input_shape) +
                    " (use model.name: mlp for flat features)");
  }
  check_common(config, data);
  if (config.channels.empty()) {
    throw Error(ErrorKind::kInvalidArgument, "model.channels must name at least one layer");
  }
  for (int64_t c : config.channels) {
    if (c <= 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  "model.channels must be positive, got " + shape_string(config.channels));
    }
  }
  // Each block halves H and W; at least one pixel must survive the last pool.
  const size_t depth = config.channels.size();
  const int64_t min_side = depth < 31 ? int64_t{1} << depth : INT64_MAX;
  if (data.input_shape[1] < min_side || data.input_shape[2] < min_side) {
    throw Error(ErrorKind::kInvalidArgument,
                std::to_string(config.channels.size()) + " conv blocks need H and W >= " +
                    std::to_string(min_side) + ", the dataset has input_shape " +
                    shape_string(data.input_shape));
  }
  return std::make_shared<Cnn>(config, data);
}

}  // namespace ddp::detail
