// The update half of a training step, once backward has run: synchronise the gradients
// (all-reduce, or ZeRO-1's reduce-scatter), unscale them (16-mixed), clip them, step the
// optimizer, and under ZeRO-1 all-gather the updated parameters. Collective: every rank
// calls it for the same step.
//
// With a loss scaler an overflow (inf/NaN in the averaged gradients: the same on every rank
// after an all-reduce; agreed over `control` after a reduce-scatter, where each rank sees its
// share only) skips the step and lowers the scale.
// Errors name the collective and the step ("gradient reduce-scatter of step 12: ...").
// Thread-safety: the training thread.
#pragma once

#include <cstdint>
#include <functional>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "collectives/communicator.h"

namespace ddp {

class DdpEngine;
class GradScaler;

struct UpdateStep {
  int64_t step = 0;                // 1-based number of the step being taken (for messages)
  double gradient_clip_val = 0.0;  // > 0: clip the global L2 norm to it
  // Called after the gradients are ready and before anything changes the parameters or the
  // optimizer state (an async save may still be copying them).
  std::function<void()> before_update;
};

// REQUIRES: backward ran since engine.prepare_backward(true). `scaler` may be null.
// Returns false when an overflow skipped the optimizer step.
bool update_parameters(torch::nn::Module& model, DdpEngine& engine,
                       torch::optim::Optimizer& optimizer, GradScaler* scaler,
                       Communicator& control, const UpdateStep& update);

}  // namespace ddp
