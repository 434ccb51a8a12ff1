// Mixed precision (Lightning's trainer.precision): "32" | "bf16-mixed" | "16-mixed".
//
// Parameters, gradients and optimizer state stay float32 ("master weights"); only the forward
// pass and the loss run under autocast in the lower precision. "16-mixed" also scales the loss
// (GradScaler) so that small float16 gradients do not underflow, and skips the optimizer step
// when a gradient overflowed -- on every rank alike, because the gradients were all-reduced
// first (an inf or NaN anywhere is in every rank's sum).
//
// Thread-safety: AutocastGuard changes thread-local autocast state of the calling thread;
// a GradScaler is used by the training thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace ddp {

enum class Precision { kFp32, kBf16Mixed, kFp16Mixed };

// "32" | "bf16-mixed" | "16-mixed" (config_validate.cpp accepts exactly these).
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

// Throws kInvalidArgument when this LibTorch cannot run `p` on `device` (float16 autocast on
// CPU is not supported by LibTorch: use bf16-mixed there), with the fix in the message.
void check_precision_supported(Precision p, const torch::Device& device);

// Autocast on the device's type for its lifetime (no-op for kFp32); restores the previous
// state and clears the autocast cast cache on exit (as torch.autocast's __exit__).
class AutocastGuard {
 public:
  AutocastGuard(Precision p, const torch::Device& device);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

struct GradScalerOptions {  // PyTorch's torch.amp.GradScaler defaults
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

// Dynamic loss scaling, as torch.amp.GradScaler: backward of scale(loss); unscale() the
// all-reduced gradients (reports inf/NaN); step only if none; update() the scale: times
// backoff_factor after an overflow, times growth_factor after growth_interval clean steps.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides every defined gradient by the scale, in place. Returns true if any gradient holds
  // an inf or NaN (the step must then be skipped). One device-to-host sync.
  bool unscale(const std::vector<torch::Tensor>& params);
  void update(bool found_inf);

  double current_scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }
  int64_t skipped_steps() const { return skipped_; }  // since construction (not saved)

  // JSON of torch's GradScaler.state_dict() fields (docs/checkpoint-format.md).
  std::string state_json() const;
  // Throws ddp::Error(kCorruption) naming the field when the JSON is unusable.
  void load_state_json(const std::string& json);

 private:
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace ddp
