// Models: a torch::nn::Module with a forward over a batch's x, created by name from a
// registry so that configs pick them and users can add their own.
//
// Built-ins (mlp, cnn, transformer) are registered when the registry is first used. A user
// model is registered from the user's own executable:
//
//   static ddp::ModelRegistration reg("my_model", [](const ddp::ModelConfig& m,
//                                                    const ddp::DatasetInfo& d) { ... });
//
// and selected with `model.name: my_model` (examples/custom_model shows the whole thing).
//
// Thread-safety: register before training starts; create() is thread-safe after that.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "runtime/config.h"
#include "runtime/data/dataset.h"

namespace ddp {

class Model : public torch::nn::Module {
 public:
  // x as produced by the dataset ([B, ...]); returns logits [B, C], predictions [B, K], or
  // LM logits [B, T, V].
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

using ModelFactory =
    std::function<std::shared_ptr<Model>(const ModelConfig&, const DatasetInfo&)>;

class ModelRegistry {
 public:
  static ModelRegistry& global();

  // Throws ddp::Error(kInvalidArgument) if the name is taken.
  void add(const std::string& name, ModelFactory factory);
  // Throws ddp::Error(kInvalidArgument) naming the registered models (and the closest one)
  // if `config.name` is unknown, or if the model does not fit the dataset's task.
  std::shared_ptr<Model> create(const ModelConfig& config, const DatasetInfo& data) const;
  std::vector<std::string> names() const;

 private:
  ModelRegistry();
  mutable std::mutex mu_;
  std::map<std::string, ModelFactory> factories_;
};

struct ModelRegistration {
  ModelRegistration(const std::string& name, ModelFactory factory) {
    ModelRegistry::global().add(name, std::move(factory));
  }
};

// Loss for a task: cross-entropy (classification, LM over flattened tokens) or MSE.
torch::Tensor compute_loss(Task task, const torch::Tensor& output, const torch::Tensor& target);

}  // namespace ddp
