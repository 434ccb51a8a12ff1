// ModelRegistry: name -> factory, the built-ins added by the constructor; and the per-task loss.
#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/functional/loss.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/models/builtin_models.h"
#include "runtime/models/model.h"

namespace ddp {
namespace {

// Optimal string alignment distance: Levenshtein plus adjacent transpositions, so that "mpl"
// is one edit from "mlp".
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

// The registered name closest to `name`, or "" if none is close enough to be a likely typo
// (at most 2 edits, or a third of the name's length for long names).
std::string closest_name(const std::string& name, const std::vector<std::string>& candidates) {
  const size_t limit = std::max<size_t>(2, name.size() / 3);
  std::string best;
  size_t best_distance = limit + 1;
  for (const auto& candidate : candidates) {
    const size_t distance = edit_distance(name, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// REQUIRES: the registry's mutex is held by the caller. std::map keeps the names sorted.
std::vector<std::string> keys(const std::map<std::string, ModelFactory>& factories) {
  std::vector<std::string> out;
  out.reserve(factories.size());
  for (const auto& entry : factories) out.push_back(entry.first);
  return out;
}

std::string tensor_shape(const torch::Tensor& t) { return detail::shape_string(t.sizes().vec()); }

}  // namespace

namespace detail {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

void check_common(const ModelConfig& config, const DatasetInfo& data) {
  if (!(config.dropout >= 0.0 && config.dropout < 1.0)) {
    throw Error(ErrorKind::kInvalidArgument,
                "model.dropout must be in [0, 1), got " + std::to_string(config.dropout));
  }
  if (data.num_outputs <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("the dataset reports num_outputs ") + std::to_string(data.num_outputs) +
                    " (task " + task_name(data.task) + "); a model needs at least 1 output");
  }
  for (int64_t dim : data.input_shape) {
    if (dim <= 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  "the dataset's input_shape " + shape_string(data.input_shape) +
                      " has a non-positive dimension");
    }
  }
}

}  // namespace detail

ModelRegistry& ModelRegistry::global() {
  // Function-local static: constructed on first use, so user registrations made from static
  // initializers in other translation units are safe whatever the initialization order.
  static ModelRegistry registry;
  return registry;
}

ModelRegistry::ModelRegistry() {
  add("mlp", detail::make_mlp);
  add("cnn", detail::make_cnn);
  add("transformer", detail::make_transformer);
}

void ModelRegistry::add(const std::string& name, ModelFactory factory) {
  if (name.empty()) {
    throw Error(ErrorKind::kInvalidArgument, "model registration: the name is empty");
  }
  if (!factory) {
    throw Error(ErrorKind::kInvalidArgument,
                "model registration '" + name + "': the factory is empty");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (factories_.count(name) != 0) {
    throw Error(ErrorKind::kInvalidArgument,
                "model '" + name + "' is already registered (registered: " +
                    join(keys(factories_)) + ")");
  }
  factories_.emplace(name, std::move(factory));
}

std::vector<std::string> ModelRegistry::names() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys(factories_);
}

std::shared_ptr<Model> ModelRegistry::create(const ModelConfig& config,
                                             const DatasetInfo& data) const {
  ModelFactory factory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = factories_.find(config.name);
    if (it == factories_.end()) {
      const std::vector<std::string> known = keys(factories_);
      std::string message = "unknown model '" + config.name + "' (registered: " + join(known) + ")";
      const std::string suggestion = closest_name(config.name, known);
      if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
      throw Error(ErrorKind::kInvalidArgument, message);
    }
    factory = it->second;  // call outside the lock: a factory may be slow or use the registry
  }
  std::shared_ptr<Model> model;
  try {
    model = factory(config, data);
  } catch (const Error& e) {
    throw Error(e.kind(), "model '" + config.name + "': " + e.what());
  }
  if (!model) {
    throw Error(ErrorKind::kInvalidArgument,
                "model '" + config.name + "': the registered factory returned no model");
  }
  return model;
}

torch::Tensor compute_loss(Task task, const torch::Tensor& output, const torch::Tensor& target) {
  namespace F = torch::nn::functional;
  const auto mismatch = [&](const std::string& expected) {
    return Error(ErrorKind::kInvalidArgument,
                 std::string("loss for task ") + task_name(task) + ": expected " + expected +
                     ", got output " + tensor_shape(output) + " and target " +
                     tensor_shape(target));
  };
  switch (task) {
    case Task::kClassification:
      if (output.dim() != 2 || target.dim() != 1 || output.size(0) != target.size(0)) {
        throw mismatch("output [B, C] and target [B]");
      }
      return F::cross_entropy(output, target);
    case Task::kRegression:
      if (output.sizes() != target.sizes()) {
        throw mismatch("output and target of the same shape [B, K]");
      }
      return F::mse_loss(output, target);
    case Task::kLanguageModel: {
      if (output.dim() != 3 || target.dim() != 2 || output.size(0) != target.size(0) ||
          output.size(1) != target.size(1)) {
        throw mismatch("output [B, T, V] and target [B, T]");
      }
      const int64_t vocab = output.size(2);
      return F::cross_entropy(output.reshape({-1, vocab}), target.reshape({-1}));
    }
  }
  throw Error(ErrorKind::kInternal, "compute_loss: unhandled task " +
                                        std::to_string(static_cast<int>(task)));
}

}  // namespace ddp
