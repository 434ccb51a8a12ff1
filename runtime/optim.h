// Optimizers (SGD with momentum, Adam, AdamW from LibTorch) and learning-rate schedules.
//
// A schedule is a pure function of the optimizer step, so resuming at step k reproduces the
// exact learning rate without any hidden scheduler state.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include "runtime/config.h"

namespace ddp {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& config,
                                                        const std::vector<torch::Tensor>& params);

class LrSchedule {
 public:
  // total_steps: the run's planned optimizer steps (cosine decays to min_lr there).
  LrSchedule(const SchedulerConfig& config, double base_lr, int64_t total_steps);
  // Learning rate to use for optimizer step `step` (0-based).
  double lr_at(int64_t step) const;

 private:
  SchedulerConfig config_;
  double base_lr_;
  int64_t total_steps_;
};

// Sets every param group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace ddp
