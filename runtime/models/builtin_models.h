// Internal: factories of the built-in models (mlp, cnn, transformer).
//
// ModelRegistry's constructor calls these explicitly rather than each model registering itself
// from a static initializer: ddp_runtime is a static library, and the linker drops object
// files nothing references, static registrars included.
//
// Each factory validates the model config and the dataset (task, input shape) and throws
// ddp::Error(kInvalidArgument) saying what it needs and what it got; create() prefixes the
// model's name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/models/model.h"

namespace ddp::detail {

// Flattens any input shape; classification or regression.
std::shared_ptr<Model> make_mlp(const ModelConfig& config, const DatasetInfo& data);
// input_shape {C, H, W}; classification or regression.
std::shared_ptr<Model> make_cnn(const ModelConfig& config, const DatasetInfo& data);
// input_shape {T} (the context length); language modelling only.
std::shared_ptr<Model> make_transformer(const ModelConfig& config, const DatasetInfo& data);

// Checks shared by the built-ins: dropout in [0, 1), num_outputs > 0, every input dimension
// > 0. Throws ddp::Error(kInvalidArgument) naming the value.
void check_common(const ModelConfig& config, const DatasetInfo& data);

// "[1, 28, 28]", for messages.
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace ddp::detail
