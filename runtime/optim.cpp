#include "runtime/optim.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "collectives/error.h"

namespace ddp {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& c,
                                                        const std::vector<torch::Tensor>& params) {
  if (c.name == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(c.lr).momentum(c.momentum).nesterov(c.nesterov)
                    .weight_decay(c.weight_decay));
  }
  if (c.name == "adam") {
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps)
                    .weight_decay(c.weight_decay));
  }
  if (c.name == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps)
                    .weight_decay(c.weight_decay));
  }
  throw Error(ErrorKind::kInvalidArgument,
              "optimizer.name must be one of sgd, adam, adamw; got '" + c.name + "'");
}

LrSchedule::LrSchedule(const SchedulerConfig& config, double base_lr, int64_t total_steps)
    : config_(config), base_lr_(base_lr), total_steps_(total_steps) {}

double LrSchedule::lr_at(int64_t step) const {
  if (config_.name == "step") {
    return base_lr_ * std::pow(config_.gamma, static_cast<double>(step / config_.step_size));
  }
  if (config_.name == "cosine") {
    if (step < config_.warmup_steps) {
      return base_lr_ * static_cast<double>(step + 1) / static_cast<double>(config_.warmup_steps);
    }
    const double span = std::max<int64_t>(1, total_steps_ - config_.warmup_steps);
    const double t = std::min(1.0, static_cast<double>(step - config_.warmup_steps) / span);
    return config_.min_lr + 0.5 * (base_lr_ - config_.min_lr) * (1.0 + std::cos(M_PI * t));
  }
  return base_lr_;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace ddp
