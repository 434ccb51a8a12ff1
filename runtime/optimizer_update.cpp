#include "runtime/optimizer_update.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include "collectives/error.h"
#include "runtime/ddp_engine.h"
#include "runtime/fault_injection.h"
#include "runtime/mixed_precision.h"

namespace ddp {

bool update_parameters(torch::nn::Module& model, DdpEngine& engine,
                       torch::optim::Optimizer& optimizer, GradScaler* scaler,
                       Communicator& control, const UpdateStep& update) {
  const bool sharded = engine.sharded();
  try {
    engine.finish_backward();
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("gradient {} of step {}: {}",
                                      sharded ? "reduce-scatter" : "all-reduce", update.step,
                                      e.what()));
  }
  // Stage 1: only the owned parameters' gradients are averaged; the rest are not looked at.
  const std::vector<torch::Tensor> grads_of =
      sharded ? engine.owned_parameters() : model.parameters();
  bool overflow = scaler && scaler->unscale(grads_of);
  if (scaler && sharded) {
    int64_t any = overflow ? 1 : 0;
    control.all_reduce(&any, 1, DType::kInt64, ReduceOp::kMax);
    overflow = any != 0;
  }
  if (update.gradient_clip_val > 0 && !overflow) {
    if (sharded) {
      engine.clip_grad_norm(update.gradient_clip_val);  // the norm over every rank's share
    } else {
      torch::nn::utils::clip_grad_norm_(model.parameters(), update.gradient_clip_val);
    }
  }
  if (update.before_update) update.before_update();
  if (!overflow) {
    optimizer.step();
    if (sharded) {
      maybe_pause_at("gather", control.rank(), update.step);
      try {
        engine.gather_parameters();
      } catch (const Error& e) {
        throw Error(e.kind(), fmt::format("parameter all-gather of step {}: {}", update.step,
                                          e.what()));
      }
    }
  }
  if (scaler) scaler->update(overflow);
  return !overflow;
}

}  // namespace ddp
