#include "runtime/state_io.h"

#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "collectives/error.h"
#include "runtime/cuda_seam.h"
#include "runtime/tensor_comm.h"

namespace ddp {
namespace {

torch::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::kFloat32: return torch::kFloat32;
    case DType::kFloat64: return torch::kFloat64;
    case DType::kFloat16: return torch::kFloat16;
    case DType::kBFloat16: return torch::kBFloat16;
    case DType::kInt32: return torch::kInt32;
    case DType::kInt64: return torch::kInt64;
    case DType::kUInt8: return torch::kUInt8;
  }
  throw Error(ErrorKind::kInternal, "unknown DType");
}

ckpt::TensorSource source_of(std::string path, const torch::Tensor& t) {
  ckpt::TensorSource s;
  s.path = std::move(path);
  s.dtype = to_dtype(t.scalar_type());
  s.shape.assign(t.sizes().begin(), t.sizes().end());
  s.bytes = static_cast<size_t>(t.numel()) * t.element_size();
  torch::Tensor ref = t;
  if (t.is_cuda()) {
    // Into (pinned) host memory on a side stream: runtime/cuda_seam.h.
    s.copy_to = [ref](void* dst) { torch_copy_cuda_to_host(ref.detach(), dst); };
    return s;
  }
  if (t.device().is_cpu() && t.is_contiguous() && !t.is_sparse()) s.host_data = t.data_ptr();
  s.copy_to = [ref](void* dst) {
    torch::Tensor host = ref.detach().to(torch::kCPU).contiguous();
    std::memcpy(dst, host.data_ptr(), host.numel() * host.element_size());
  };
  return s;
}

// LibTorch 1.13 keys optimizer state by the TensorImpl's address as a string; 2.x by the
// address itself.
template <typename Map>
auto state_key(const Map&, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // what 1.13's c10::guts::to_string does (gone in 2.x)
    key << p.unsafeGetTensorImpl();
    return key.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

std::string shape_text(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace

torch::Tensor entry_to_tensor(const ckpt::TensorEntry& e) {
  auto t = torch::empty(e.shape, torch::TensorOptions().dtype(to_scalar_type(e.dtype)));
  if (static_cast<size_t>(t.numel() * t.element_size()) != e.data.size()) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("checkpoint tensor '{}': {} bytes for shape {}", e.path,
                            e.data.size(), shape_text(e.shape)));
  }
  if (!e.data.empty()) std::memcpy(t.data_ptr(), e.data.data(), e.data.size());
  return t;
}

std::vector<ckpt::TensorSource> model_sources(const torch::nn::Module& model) {
  std::vector<ckpt::TensorSource> out;
  std::set<std::string> parameters;  // change only at an update; buffers may change in forward
  for (const auto& item : model.named_parameters()) parameters.insert(item.key());
  for (const auto& [name, t] : named_state(model)) {
    out.push_back(source_of("model/" + name, t));
    out.back().changes_only_at_update = parameters.count(name) > 0;
  }
  return out;
}

std::vector<ckpt::TensorSource> optimizer_sources(torch::optim::Optimizer& optimizer,
                                                  const torch::nn::Module& model) {
  std::vector<ckpt::TensorSource> out;
  auto& state = optimizer.state();
  for (const auto& item : model.named_parameters()) {
    auto it = state.find(state_key(state, item.value()));
    if (it == state.end()) continue;
    const std::string base = "optimizer/" + item.key() + "/";
    auto* st = it->second.get();
    auto step_source = [&](int64_t step) {
      out.push_back(source_of(base + "step", torch::tensor(step, torch::kInt64)));
    };
    if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(st)) {
      if (s->momentum_buffer().defined()) out.push_back(source_of(base + "momentum_buffer", s->momentum_buffer()));
    } else if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(st)) {
      step_source(a->step());
      out.push_back(source_of(base + "exp_avg", a->exp_avg()));
      out.push_back(source_of(base + "exp_avg_sq", a->exp_avg_sq()));
      if (a->max_exp_avg_sq().defined()) out.push_back(source_of(base + "max_exp_avg_sq", a->max_exp_avg_sq()));
    } else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(st)) {
      step_source(w->step());
      out.push_back(source_of(base + "exp_avg", w->exp_avg()));
      out.push_back(source_of(base + "exp_avg_sq", w->exp_avg_sq()));
      if (w->max_exp_avg_sq().defined()) out.push_back(source_of(base + "max_exp_avg_sq", w->max_exp_avg_sq()));
    } else {
      throw Error(ErrorKind::kInternal, "unsupported optimizer state type");
    }
  }
  for (auto& s : out) s.changes_only_at_update = true;  // optimizer.step() is what changes them
  return out;
}

std::string optimizer_json(torch::optim::Optimizer& optimizer, const std::string& name,
                           const torch::nn::Module& model, int64_t zero_stage) {
  nlohmann::json j;
  j["type"] = name;
  j["zero_stage"] = zero_stage;
  // The optimizer's parameter order (torch matches state to parameters by position).
  std::vector<std::string> names;
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) names.push_back(item.key());
  }
  nlohmann::json groups = nlohmann::json::array();
  for (auto& g : optimizer.param_groups()) {
    nlohmann::json group;
    group["lr"] = g.options().get_lr();
    group["num_params"] = names.size();  // the model's, also when this rank steps a share
    group["param_names"] = names;  // one group: all trainable parameters, model order
    if (auto* o = dynamic_cast<torch::optim::SGDOptions*>(&g.options())) {
      group["momentum"] = o->momentum();
      group["weight_decay"] = o->weight_decay();
      group["nesterov"] = o->nesterov();
    } else if (auto* a = dynamic_cast<torch::optim::AdamOptions*>(&g.options())) {
      group["betas"] = {std::get<0>(a->betas()), std::get<1>(a->betas())};
      group["eps"] = a->eps();
      group["weight_decay"] = a->weight_decay();
    } else if (auto* w = dynamic_cast<torch::optim::AdamWOptions*>(&g.options())) {
      group["betas"] = {std::get<0>(w->betas()), std::get<1>(w->betas())};
      group["eps"] = w->eps();
      group["weight_decay"] = w->weight_decay();
    }
    groups.push_back(group);
  }
  j["param_groups"] = groups;
  return j.dump();
}

std::string LoadReport::describe() const {
  std::vector<std::string> parts;
  if (!missing.empty()) parts.push_back(fmt::format("missing keys: {}", fmt::join(missing, ", ")));
  if (!unexpected.empty()) parts.push_back(fmt::format("unexpected keys: {}", fmt::join(unexpected, ", ")));
  if (!mismatched.empty()) parts.push_back(fmt::format("mismatched: {}", fmt::join(mismatched, "; ")));
  return fmt::format("{}", fmt::join(parts, "; "));
}

LoadReport load_model_state(torch::nn::Module& model, const ckpt::Checkpoint& checkpoint,
                            bool strict) {
  std::map<std::string, const ckpt::TensorEntry*> saved;
  for (const auto& e : checkpoint.tensors) {
    if (e.path.rfind("model/", 0) == 0) saved[e.path.substr(6)] = &e;
  }
  LoadReport report;
  std::vector<std::pair<torch::Tensor, const ckpt::TensorEntry*>> to_copy;
  for (const auto& [name, t] : named_state(model)) {
    auto it = saved.find(name);
    if (it == saved.end()) {
      report.missing.push_back(name);
      continue;
    }
    const auto* e = it->second;
    saved.erase(it);
    const std::vector<int64_t> want(t.sizes().begin(), t.sizes().end());
    const DType want_dtype = to_dtype(t.scalar_type());
    if (e->shape != want || e->dtype != want_dtype) {
      report.mismatched.push_back(fmt::format("'{}': saved shape {} {}, model expects {} {}", name,
                                              shape_text(e->shape), dtype_name(e->dtype),
                                              shape_text(want), dtype_name(want_dtype)));
      continue;
    }
    to_copy.emplace_back(t, e);
  }
  for (const auto& [name, e] : saved) report.unexpected.push_back(name);
  if (strict && !report.clean()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint does not match the model (strict): {}", report.describe()));
  }
  torch::NoGradGuard no_grad;
  for (auto& [t, e] : to_copy) t.copy_(entry_to_tensor(*e));
  return report;
}

void load_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& name,
                          const torch::nn::Module& model, const ckpt::Checkpoint& checkpoint) {
  const auto saved_json = nlohmann::json::parse(checkpoint.meta.optimizer_json, nullptr, false);
  const std::string saved_type =
      saved_json.is_object() ? saved_json.value("type", std::string()) : std::string();
  if (saved_type != name) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint optimizer is '{}', this run uses optimizer.name={}; "
                            "resume with the same optimizer or load weights only",
                            saved_type, name));
  }
  std::map<std::string, const ckpt::TensorEntry*> saved;
  for (const auto& e : checkpoint.tensors) {
    if (e.path.rfind("optimizer/", 0) == 0) saved[e.path.substr(10)] = &e;
  }
  auto get = [&](const std::string& key) -> torch::Tensor {
    auto it = saved.find(key);
    return it == saved.end() ? torch::Tensor() : entry_to_tensor(*it->second);
  };
  auto& state = optimizer.state();
  state.clear();
  std::set<const void*> held;  // the parameters this optimizer steps
  for (auto& g : optimizer.param_groups()) {
    for (const auto& p : g.params()) held.insert(p.unsafeGetTensorImpl());
  }
  for (const auto& item : model.named_parameters()) {
    const auto& p = item.value();
    if (held.count(p.unsafeGetTensorImpl()) == 0) continue;
    const std::string base = item.key() + "/";
    auto on_device = [&](torch::Tensor t) { return t.defined() ? t.to(p.device()) : t; };
    if (name == "sgd") {
      auto buf = get(base + "momentum_buffer");
      if (!buf.defined()) continue;
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(on_device(buf));
      state[state_key(state, p)] = std::move(s);
    } else {
      auto step = get(base + "step");
      if (!step.defined()) continue;
      auto fill = [&](auto s) {
        s->step(step.item<int64_t>());
        s->exp_avg(on_device(get(base + "exp_avg")));
        s->exp_avg_sq(on_device(get(base + "exp_avg_sq")));
        auto mx = get(base + "max_exp_avg_sq");
        if (mx.defined()) s->max_exp_avg_sq(on_device(mx));
        state[state_key(state, p)] = std::move(s);
      };
      if (name == "adam") fill(std::make_unique<torch::optim::AdamParamState>());
      else fill(std::make_unique<torch::optim::AdamWParamState>());
    }
  }
}

std::vector<uint8_t> cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  torch::Tensor s = gen.get_state();
  const auto* p = s.data_ptr<uint8_t>();
  return std::vector<uint8_t>(p, p + s.numel());
}

void set_cpu_rng_state(const std::vector<uint8_t>& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  auto t = torch::empty({static_cast<int64_t>(state.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr(), state.data(), state.size());
  gen.set_state(t);
}

std::vector<uint8_t> cuda_rng_state() { return torch_cuda_rng_state(); }

void set_cuda_rng_state(const std::vector<uint8_t>& state) {
  if (!state.empty()) torch_set_cuda_rng_state(state);
}

std::string architecture_fingerprint(const torch::nn::Module& model) {
  return ckpt::hex64(fingerprint(named_state(model)));
}

}  // namespace ddp
