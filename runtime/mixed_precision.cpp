#include "runtime/mixed_precision.h"

#include <cmath>

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include "collectives/error.h"

// LibTorch 2.4 replaced the per-device autocast setters by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DDP_AUTOCAST_BY_DEVICE_TYPE 1
#endif

namespace ddp {
namespace {

bool autocast_enabled(bool cuda) {
#if defined(DDP_AUTOCAST_BY_DEVICE_TYPE)
  return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU);
#else
  return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast_enabled(bool cuda, bool on) {
#if defined(DDP_AUTOCAST_BY_DEVICE_TYPE)
  at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, on);
#else
  if (cuda) at::autocast::set_enabled(on);
  else at::autocast::set_cpu_enabled(on);
#endif
}

at::ScalarType autocast_dtype(bool cuda) {
#if defined(DDP_AUTOCAST_BY_DEVICE_TYPE)
  return at::autocast::get_autocast_dtype(cuda ? at::kCUDA : at::kCPU);
#else
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast_dtype(bool cuda, at::ScalarType dtype) {
#if defined(DDP_AUTOCAST_BY_DEVICE_TYPE)
  at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, dtype);
#else
  if (cuda) at::autocast::set_autocast_gpu_dtype(dtype);
  else at::autocast::set_autocast_cpu_dtype(dtype);
#endif
}

}  // namespace

Precision parse_precision(const std::string& name) {
  if (name == "32") return Precision::kFp32;
  if (name == "bf16-mixed") return Precision::kBf16Mixed;
  if (name == "16-mixed") return Precision::kFp16Mixed;
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("trainer.precision: expected \"32\", bf16-mixed or 16-mixed, got \"{}\"",
                          name));
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kFp32: return "32";
    case Precision::kBf16Mixed: return "bf16-mixed";
    case Precision::kFp16Mixed: return "16-mixed";
  }
  return "?";
}

void check_precision_supported(Precision p, const torch::Device& device) {
  if (p == Precision::kFp16Mixed && !device.is_cuda()) {
    throw Error(ErrorKind::kInvalidArgument,
                "trainer.precision=16-mixed needs model.device=cuda: LibTorch's CPU autocast "
                "does not run float16; use trainer.precision=bf16-mixed on CPU");
  }
}

AutocastGuard::AutocastGuard(Precision p, const torch::Device& device) {
  if (p == Precision::kFp32) return;
  active_ = true;
  cuda_ = device.is_cuda();
  prev_enabled_ = autocast_enabled(cuda_);
  prev_dtype_ = autocast_dtype(cuda_);
  set_autocast_dtype(cuda_, p == Precision::kBf16Mixed ? at::kBFloat16 : at::kHalf);
  set_autocast_enabled(cuda_, true);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(cuda_, prev_enabled_);
  set_autocast_dtype(cuda_, prev_dtype_);
}

GradScaler::GradScaler(GradScalerOptions options)
    : options_(options), scale_(options.init_scale) {
  if (!(options_.init_scale > 0) || !(options_.growth_factor > 1) ||
      !(options_.backoff_factor > 0 && options_.backoff_factor < 1) ||
      options_.growth_interval < 1) {
    throw Error(ErrorKind::kInvalidArgument,
                "GradScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                "growth_interval >= 1");
  }
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const { return loss * scale_; }

bool GradScaler::unscale(const std::vector<torch::Tensor>& params) {
  const double inv = 1.0 / scale_;
  torch::Tensor found;
  for (const auto& p : params) {
    torch::Tensor g = p.grad();
    if (!g.defined()) continue;
    torch::Tensor bad = torch::isfinite(g).logical_not().any();
    found = found.defined() ? found.logical_or(bad) : bad;
    g.mul_(inv);
  }
  return found.defined() && found.item<bool>();
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    ++skipped_;
    return;
  }
  if (++growth_tracker_ >= options_.growth_interval) {
    const double grown = scale_ * options_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;  // as torch: never grow into inf
    growth_tracker_ = 0;
  }
}

std::string GradScaler::state_json() const {
  return nlohmann::json{{"scale", scale_},
                        {"growth_tracker", growth_tracker_},
                        {"growth_factor", options_.growth_factor},
                        {"backoff_factor", options_.backoff_factor},
                        {"growth_interval", options_.growth_interval}}
      .dump();
}

void GradScaler::load_state_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    throw Error(ErrorKind::kCorruption, "grad scaler state: not valid JSON");
  }
  auto number = [&](const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number()) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("grad scaler state: no number '{}'", key));
    }
    return j[key].get<double>();
  };
  const double scale = number("scale");
  const double tracker = number("growth_tracker");
  GradScalerOptions o;
  o.growth_factor = number("growth_factor");
  o.backoff_factor = number("backoff_factor");
  o.growth_interval = static_cast<int64_t>(number("growth_interval"));
  if (!(scale > 0) || !std::isfinite(scale) || tracker < 0) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("grad scaler state: scale {} / growth_tracker {} out of range", scale,
                            tracker));
  }
  o.init_scale = scale;
  *this = GradScaler(o);  // validates the factors
  growth_tracker_ = static_cast<int64_t>(tracker);
}

}  // namespace ddp
