#include "runtime/load_api.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/format_reader.h"
#include "collectives/error.h"
#include "runtime/cuda_seam.h"

namespace ddp {
namespace {

DatasetInfo data_info_from(const std::string& hparams_json, const std::string& path) {
  const auto j = nlohmann::json::parse(hparams_json, nullptr, false);
  if (!j.is_object() || !j.contains("data_info")) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint '{}' does not record the model's input shape "
                            "(hparams.data_info)",
                            path));
  }
  const auto& d = j["data_info"];
  DatasetInfo info;
  const std::string task = d.value("task", "classification");
  info.task = task == "regression"       ? Task::kRegression
              : task == "language_model" ? Task::kLanguageModel
                                         : Task::kClassification;
  info.input_shape = d.value("input_shape", std::vector<int64_t>{});
  info.num_outputs = d.value("num_outputs", int64_t{0});
  return info;
}

}  // namespace

LoadedModel load_from_checkpoint(const std::string& path, const LoadOptions& options) {
  ckpt::ReadOptions ro;
  ro.include_optimizer = false;
  ro.include_ranks = false;
  LoadedModel out;
  const ckpt::Checkpoint c = ckpt::read_checkpoint(path, ro);
  out.meta = c.meta;
  for (const auto& o : options.overrides) {
    if (o.rfind("model.", 0) != 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("hyperparameter override '{}' must be a model.* key", o));
    }
  }
  out.config = load_config_from_string(c.meta.config_yaml, options.overrides);
  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(options.map_location);
  } catch (const c10::Error&) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("map_location '{}': expected cpu, cuda or cuda:N",
                            options.map_location));
  }
  if (device.is_cuda() && !torch_cuda_available()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("map_location '{}': no CUDA GPU is usable here; use map_location=cpu "
                            "(checkpoints load on CPU-only machines)",
                            options.map_location));
  }
  out.config.model.device = device.is_cuda() ? "cuda" : "cpu";
  out.model = ModelRegistry::global().create(out.config.model,
                                             data_info_from(c.meta.hparams_json, path));
  out.report = load_model_state(*out.model, c, options.strict);
  out.model->to(device);
  return out;
}

}  // namespace ddp
