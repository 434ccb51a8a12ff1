// A user's own model, trained by the stock ddp-runtime trainer.
//
// Three steps make a model selectable with `model.name: my_model`:
//   1. derive from ddp::Model and implement forward(x) for the dataset's batches;
//   2. register a factory under a name with a static ddp::ModelRegistration (it runs before
//      main, so the name is known by the time the config is read);
//   3. link the executable against ddp::ddp_train_cli and hand main to ddp::train_cli_main,
//      which parses the same flags as ddp-train and runs the training.
//
// Here: a residual MLP. Its width and depth come from the free-form `model.options` map of
// the config (strings, since options are model-specific and not checked by the config loader).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "launcher/train_cli.h"
#include "runtime/models/model.h"

namespace {

// model.options[key] as a positive integer, or `fallback` if the key is absent. A bad value
// is the user's to fix: ddp::Error(kInvalidArgument) maps to exit code 2 with the message.
int64_t positive_option(const ddp::ModelConfig& config, const std::string& key,
                        int64_t fallback) {
  auto it = config.options.find(key);
  if (it == config.options.end()) return fallback;
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size() || value <= 0) {
    throw ddp::Error(ddp::ErrorKind::kInvalidArgument,
                     "model.options." + key + " must be a positive integer, got '" +
                         it->second + "'");
  }
  return value;
}

// x + fc2(relu(fc1(norm(x)))): keeps the width, so blocks stack freely.
class ResidualBlock final : public torch::nn::Module {
 public:
  explicit ResidualBlock(int64_t width) {
    norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
    fc1_ = register_module("fc1", torch::nn::Linear(width, width));
    fc2_ = register_module("fc2", torch::nn::Linear(width, width));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return x + fc2_->forward(torch::relu(fc1_->forward(norm_->forward(x))));
  }

 private:
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

// Flat features [B, ...] -> stem -> depth residual blocks -> head [B, num_outputs].
//
// Parameter names (what checkpoints store): stem.*, blocks.<i>.{norm,fc1,fc2}.*, head.*.
// Register every submodule under a fixed name; names that depend on options would stop
// checkpoints from loading when an option changes.
class ResidualMlp final : public ddp::Model {
 public:
  ResidualMlp(int64_t in_features, int64_t width, int64_t depth, int64_t num_outputs)
      : in_features_(in_features) {
    stem_ = register_module("stem", torch::nn::Linear(in_features, width));
    auto list = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < depth; ++i) {
      blocks_.push_back(std::make_shared<ResidualBlock>(width));
      list->push_back(blocks_.back());
    }
    head_ = register_module("head", torch::nn::Linear(width, num_outputs));
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor h = stem_->forward(x.reshape({x.size(0), in_features_}));
    for (const auto& block : blocks_) h = block->forward(h);
    return head_->forward(torch::relu(h));
  }

 private:
  int64_t in_features_;
  torch::nn::Linear stem_{nullptr}, head_{nullptr};
  std::vector<std::shared_ptr<ResidualBlock>> blocks_;
};

// The factory sees the model section of the config and what the dataset provides; it should
// reject a dataset it cannot handle with a message saying what it needs.
std::shared_ptr<ddp::Model> make_my_model(const ddp::ModelConfig& config,
                                          const ddp::DatasetInfo& data) {
  if (data.task == ddp::Task::kLanguageModel) {
    throw ddp::Error(ddp::ErrorKind::kInvalidArgument,
                     "needs a classification or regression dataset, got token data");
  }
  int64_t in_features = 1;
  for (int64_t dim : data.input_shape) in_features *= dim;
  return std::make_shared<ResidualMlp>(in_features, positive_option(config, "width", 128),
                                       positive_option(config, "depth", 2), data.num_outputs);
}

// Registered before main runs. It lives in this executable's own source file, so the linker
// keeps it (a registration inside a static library nobody references would be dropped).
const ddp::ModelRegistration kRegisterMyModel("my_model", make_my_model);

}  // namespace

int main(int argc, char** argv) { return ddp::train_cli_main(argc, argv); }
