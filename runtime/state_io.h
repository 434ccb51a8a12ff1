// Bridge between LibTorch objects and the checkpoint's in-memory form (checkpoint/): model
// parameters and buffers, optimizer state, RNG state. The only place that knows both.
//
// Paths: "model/<state_dict key>", "optimizer/<param name>/<field>" where field is
// momentum_buffer (SGD) or step, exp_avg, exp_avg_sq, max_exp_avg_sq (Adam, AdamW).
//
// Thread-safety: the TensorSources read live tensors; call copy_to before the next step.
// Parameters and optimizer state are marked changes_only_at_update (an async save copies
// them during the next forward/backward); buffers are not (BatchNorm updates them in forward).
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/sharded_save.h"

namespace ddp {

std::vector<ckpt::TensorSource> model_sources(const torch::nn::Module& model);
// The state this rank's optimizer holds, in model order (under ZeRO-1 the parameters this
// rank owns only: runtime/zero_checkpoint.h completes the list).
std::vector<ckpt::TensorSource> optimizer_sources(torch::optim::Optimizer& optimizer,
                                                  const torch::nn::Module& model);
// Type, hyperparameters and the parameter order of every trainable parameter of the model,
// plus the ZeRO stage it was trained with (metadata only: the layout is the same).
std::string optimizer_json(torch::optim::Optimizer& optimizer, const std::string& name,
                           const torch::nn::Module& model, int64_t zero_stage = 0);

// What load_model_state did not load (strict=false) — empty when everything matched.
struct LoadReport {
  std::vector<std::string> missing;     // in the model, not in the checkpoint
  std::vector<std::string> unexpected;  // in the checkpoint, not in the model
  std::vector<std::string> mismatched;  // "key: saved [a, b] float32, model expects [c] float32"
  bool clean() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string describe() const;
};

// Copies "model/*" tensors into the model (converted to each parameter's device). strict:
// any missing/unexpected/mismatched key throws ddp::Error(kInvalidArgument) listing all of
// them in one message; otherwise the matching keys are loaded and the rest reported.
LoadReport load_model_state(torch::nn::Module& model, const ckpt::Checkpoint& checkpoint,
                            bool strict);
// Recreates the optimizer's per-parameter state from "optimizer/*", for the parameters the
// optimizer holds (under ZeRO-1 this rank's own; the checkpoint may lack the others').
// Throws ddp::Error(kInvalidArgument) if the checkpoint's optimizer type differs.
void load_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& name,
                          const torch::nn::Module& model, const ckpt::Checkpoint& checkpoint);

std::vector<uint8_t> cpu_rng_state();
void set_cpu_rng_state(const std::vector<uint8_t>& state);
// The default CUDA generator of the current device (empty without CUDA: runtime/cuda_seam.h).
// Setting an empty state, or any state on a machine without CUDA, does nothing (a GPU
// checkpoint resumes on CPU).
std::vector<uint8_t> cuda_rng_state();
void set_cuda_rng_state(const std::vector<uint8_t>& state);

// Architecture fingerprint (hex) of the model's named parameters and buffers.
std::string architecture_fingerprint(const torch::nn::Module& model);

torch::Tensor entry_to_tensor(const ckpt::TensorEntry& entry);

}  // namespace ddp
