// mlp: flatten, then Linear + ReLU (+ dropout) per hidden size, then Linear to the outputs.
//
// Parameter names: layers.<i>.weight / layers.<i>.bias for i = 0 .. hidden_sizes.size(), the
// last being the output layer. ReLU and dropout are applied functionally, so the names do not
// depend on the dropout setting (they are part of the checkpoint format).
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/models/builtin_models.h"

namespace ddp::detail {
namespace {

class Mlp final : public Model {
 public:
  Mlp(const ModelConfig& config, const DatasetInfo& data) : dropout_(config.dropout) {
    int64_t in_features = 1;
    for (int64_t dim : data.input_shape) in_features *= dim;
    in_features_ = in_features;
    layers_ = register_module("layers", torch::nn::ModuleList());
    for (int64_t width : config.hidden_sizes) {
      linears_.emplace_back(in_features, width);
      in_features = width;
    }
    linears_.emplace_back(in_features, data.num_outputs);
    for (const auto& linear : linears_) layers_->push_back(linear);
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    // Any sample shape: [B, d1, d2, ...] -> [B, d1 * d2 * ...].
    torch::Tensor h = x.reshape({x.size(0), in_features_});
    const size_t last = linears_.size() - 1;
    for (size_t i = 0; i < linears_.size(); ++i) {
      h = linears_[i]->forward(h);
      if (i == last) break;
      h = torch::relu(h);
      if (dropout_ > 0.0) h = torch::dropout(h, dropout_, is_training());
    }
    return h;
  }

 private:
  double dropout_;
  int64_t in_features_;
  torch::nn::ModuleList layers_{nullptr};   // owns and names the layers
  std::vector<torch::nn::Linear> linears_;  // the same layers, typed

};

}  // namespace

std::shared_ptr<Model> make_mlp(const ModelConfig& config, const DatasetInfo& data) {
  if (data.task != Task::kClassification && data.task != Task::kRegression) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("needs a classification or regression dataset, got task ") +
                    task_name(data.task) + " (use model.name: transformer for token data)");
  }
  check_common(config, data);
  for (int64_t width : config.hidden_sizes) {
    if (width <= 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  "model.hidden_sizes must be positive, got " + shape_string(config.hidden_sizes));
    }
  }
  return std::make_shared<Mlp>(config, data);
}

}  // namespace ddp::detail
