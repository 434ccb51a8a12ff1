// Loading a trained model from a checkpoint, for inference or fine-tuning — the equivalent of
// Lightning's `Model.load_from_checkpoint(path, map_location=..., strict=..., **overrides)`.
//
// The model is rebuilt from the checkpoint's own hyperparameters (the model section of its
// config and the dataset shape it was trained on), optionally overridden, then its weights
// are loaded. Errors: kNotFound (no file), kCorruption (checksum), kInvalidArgument (not a
// ddp-runtime checkpoint, newer format, or — with strict — one message listing missing keys,
// unexpected keys and shape/dtype mismatches as "key: saved [..], model expects [..]").
//
// Thread-safety: reentrant.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "runtime/config.h"
#include "runtime/models/model.h"
#include "runtime/state_io.h"

namespace ddp {

struct LoadOptions {
  std::string map_location = "cpu";  // "cpu", "cuda" or "cuda:N": where the weights go
  bool strict = true;                // every key must match (false: load what matches)
  // Hyperparameter overrides, "model.key=value" (as --set), e.g. "model.dropout=0.2".
  std::vector<std::string> overrides;
};

struct LoadedModel {
  std::shared_ptr<Model> model;
  Config config;           // the checkpoint's config with the overrides applied
  LoadReport report;       // what was not loaded (strict=false)
  ckpt::CheckpointMeta meta;
};

LoadedModel load_from_checkpoint(const std::string& path, const LoadOptions& options = {});

}  // namespace ddp
