// Synthetic datasets drawn from the seed: the same tensors on every rank and every run, so
// ranks can shard them with DistributedSampler without any communication.
//
// Every draw comes from a CPU generator seeded from (seed, stream): stream 0 is the teacher
// (the hidden ground-truth function), 1 the training inputs and noise, 2 the validation ones.
// Train and validation therefore share the teacher but never their samples.
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"

namespace ddp {
namespace {

constexpr uint64_t kTeacherStream = 0;
constexpr uint64_t kTrainStream = 1;
constexpr uint64_t kValStream = 2;
// Teacher hidden width: small enough that a default MLP learns the task well, large enough
// that the decision boundaries are not linear.
constexpr int64_t kTeacherHidden = 32;
// Teacher inputs drawn once to centre its logits, so that no class is (almost) empty.
constexpr int64_t kCalibrationSamples = 8192;

// splitmix64: decorrelates the streams of nearby seeds (seed 1's teacher is not seed 0's
// training stream).
uint64_t stream_seed(int64_t seed, uint64_t stream) {
  uint64_t z = static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

at::Generator make_generator(int64_t seed, uint64_t stream) {
  return at::detail::createCPUGenerator(stream_seed(seed, stream));
}

void require_positive(int64_t value, const char* key) {
  if (value <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.{} must be positive, got {}", key, value));
  }
}

void require_non_negative(int64_t value, const char* key) {
  if (value < 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.{} must be >= 0, got {}", key, value));
  }
}

void validate_common(const DataConfig& config) {
  require_non_negative(config.num_samples, "num_samples");
  require_non_negative(config.val_samples, "val_samples");
  require_positive(config.num_features, "num_features");
  if (!(config.noise >= 0.0)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.noise must be >= 0, got {}", config.noise));
  }
}

// A random 2-layer tanh network; logits are computed in float64 so that the labels do not
// depend on the BLAS's summation order (threads, library version).
struct Teacher {
  torch::Tensor w1;    // [F, H]
  torch::Tensor w2;    // [H, C]
  torch::Tensor bias;  // [C], centres the logits over the input distribution

  torch::Tensor logits(const torch::Tensor& x) const {
    return torch::tanh(x.to(torch::kDouble).matmul(w1)).matmul(w2) - bias;
  }
};

Teacher make_teacher(int64_t seed, int64_t num_features, int64_t num_classes) {
  auto gen = make_generator(seed, kTeacherStream);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  Teacher t;
  // Gains chosen so that the hidden units are neither linear nor saturated (pre-activation
  // std ~1.5) and the logit spread (~2) dominates the default label noise (0.1).
  t.w1 = torch::randn({num_features, kTeacherHidden}, gen, f64) *
         (1.5 / std::sqrt(static_cast<double>(num_features)));
  t.w2 = torch::randn({kTeacherHidden, num_classes}, gen, f64) *
         (2.0 / std::sqrt(static_cast<double>(kTeacherHidden)));
  t.bias = torch::zeros({num_classes}, f64);
  const torch::Tensor calib = torch::randn({kCalibrationSamples, num_features}, gen, f64);
  t.bias = t.logits(calib).mean(0);
  return t;
}

std::shared_ptr<Dataset> draw_classification(const Teacher& teacher, int64_t n,
                                             const DataConfig& config, int64_t seed,
                                             uint64_t stream, const DatasetInfo& info) {
  auto gen = make_generator(seed, stream);
  const torch::Tensor x = torch::randn({n, config.num_features}, gen, torch::kFloat);
  const torch::Tensor noise = torch::randn({n, config.num_classes}, gen, torch::kDouble);
  const torch::Tensor y = (teacher.logits(x) + config.noise * noise).argmax(1).to(torch::kLong);
  return std::make_shared<TensorDataset>(x, y, info);
}

std::shared_ptr<Dataset> draw_regression(const torch::Tensor& w, int64_t n,
                                         const DataConfig& config, int64_t seed,
                                         uint64_t stream, const DatasetInfo& info) {
  auto gen = make_generator(seed, stream);
  const torch::Tensor x = torch::randn({n, config.num_features}, gen, torch::kFloat);
  const torch::Tensor noise = torch::randn({n, 1}, gen, torch::kDouble);
  const torch::Tensor y =
      (x.to(torch::kDouble).matmul(w) + config.noise * noise).to(torch::kFloat);
  return std::make_shared<TensorDataset>(x, y, info);
}

}  // namespace

// Declared in make_datasets.cpp.
DataSplits make_synthetic_classification(const DataConfig& config, int64_t seed) {
  validate_common(config);
  if (config.num_classes < 2) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.num_classes must be >= 2, got {}", config.num_classes));
  }
  DatasetInfo info;
  info.task = Task::kClassification;
  info.input_shape = {config.num_features};
  info.num_outputs = config.num_classes;
  const Teacher teacher = make_teacher(seed, config.num_features, config.num_classes);
  return DataSplits{
      draw_classification(teacher, config.num_samples, config, seed, kTrainStream, info),
      draw_classification(teacher, config.val_samples, config, seed, kValStream, info)};
}

// Declared in make_datasets.cpp.
DataSplits make_synthetic_regression(const DataConfig& config, int64_t seed) {
  validate_common(config);
  DatasetInfo info;
  info.task = Task::kRegression;
  info.input_shape = {config.num_features};
  info.num_outputs = 1;
  // Unit-variance target before noise: w ~ N(0, 1/F).
  auto gen = make_generator(seed, kTeacherStream);
  const torch::Tensor w =
      torch::randn({config.num_features, 1}, gen, torch::TensorOptions().dtype(torch::kDouble)) /
      std::sqrt(static_cast<double>(config.num_features));
  return DataSplits{draw_regression(w, config.num_samples, config, seed, kTrainStream, info),
                    draw_regression(w, config.val_samples, config, seed, kValStream, info)};
}

}  // namespace ddp
