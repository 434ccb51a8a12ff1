#include "runtime/ddp_engine.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "collectives/error.h"
#include "runtime/tensor_comm.h"
#include "runtime/zero_partition.h"

namespace ddp {

DdpEngine::DdpEngine(std::shared_ptr<torch::nn::Module> model, Communicator& grad_comm,
                     Communicator& control, DdpOptions options)
    : model_(std::move(model)), comm_(grad_comm), control_(control), options_(options) {
  for (auto& p : model_->parameters()) {
    if (p.requires_grad()) params_.push_back(p);
  }
  sync_initial_state();
  if (options_.shard_optimizer) {
    std::vector<int64_t> numels;
    for (const auto& p : params_) numels.push_back(p.numel());
    owner_ = partition_parameters(numels, comm_.size());
  } else {
    owner_.assign(params_.size(), comm_.rank());
  }
  build_buckets();
  install_hooks();
}

DdpEngine::~DdpEngine() {
  for (size_t i = 0; i < accumulators_.size(); ++i) {
    accumulators_[i]->del_post_hook(hook_keys_[i]);
  }
}

void DdpEngine::sync_initial_state() {
  const auto named = named_state(*model_);
  const auto bad_arch = ranks_differing_from_root(control_, fingerprint(named));
  if (!bad_arch.empty()) {
    throw Error(ErrorKind::kMismatch,
                fmt::format("model architecture on rank(s) {} differs from rank 0 (parameter "
                            "names, shapes or dtypes): every rank must build the same model",
                            fmt::join(bad_arch, ", ")));
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : named) {
    if (!t.is_contiguous()) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("parameter '{}' is not contiguous", name));
    }
    broadcast(comm_, t, 0);
  }
  if (const auto bad = ranks_differing_from_root(control_, state_hash()); !bad.empty()) {
    throw Error(ErrorKind::kMismatch,
                fmt::format("after the initial broadcast, parameters on rank(s) {} still differ "
                            "from rank 0",
                            fmt::join(bad, ", ")));
  }
}

uint64_t DdpEngine::state_hash() const {
  std::vector<torch::Tensor> tensors;
  for (const auto& [name, t] : named_state(*model_)) tensors.push_back(t);
  return content_hash(tensors);
}

void DdpEngine::build_buckets() {
  const double cap_bytes = options_.bucket_cap_mb * 1024.0 * 1024.0;
  bucket_of_.assign(params_.size(), 0);
  std::vector<std::vector<size_t>> groups;
  double group_bytes = 0;
  // Reverse registration order approximates the order in which backward produces gradients.
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    const double bytes = static_cast<double>(p.numel() * p.element_size());
    const bool same_kind = !groups.empty() &&
                           params_[groups.back().front()].scalar_type() == p.scalar_type() &&
                           params_[groups.back().front()].device() == p.device();
    if (groups.empty() || !same_kind || group_bytes + bytes > cap_bytes) {
      groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().push_back(k);
    group_bytes += bytes;
  }
  torch::NoGradGuard no_grad;
  buckets_.resize(groups.size());
  offset_in_bucket_.assign(params_.size(), 0);
  const int world = comm_.size();
  for (size_t b = 0; b < groups.size(); ++b) {
    Bucket& bucket = buckets_[b];
    bucket.params = groups[b];
    if (options_.shard_optimizer) {  // each owner's parameters back to back
      std::stable_sort(bucket.params.begin(), bucket.params.end(),
                       [&](size_t x, size_t y) { return owner_[x] < owner_[y]; });
      bucket.counts.assign(static_cast<size_t>(world), 0);
      for (size_t k : bucket.params) {
        bucket.counts[static_cast<size_t>(owner_[k])] += static_cast<size_t>(params_[k].numel());
      }
      for (int r = 0; r < comm_.rank(); ++r) {
        bucket.my_offset += static_cast<int64_t>(bucket.counts[static_cast<size_t>(r)]);
      }
    }
    int64_t total = 0;
    for (size_t k : bucket.params) total += params_[k].numel();
    const auto& first = params_[bucket.params.front()];
    bucket.flat = torch::zeros({total}, first.options());
    if (options_.wire_dtype != first.scalar_type()) {
      bucket.wire = torch::zeros({total}, first.options().dtype(options_.wire_dtype));
    }
    if (options_.shard_optimizer) {
      const auto mine = static_cast<int64_t>(bucket.counts[static_cast<size_t>(comm_.rank())]);
      bucket.shard = torch::zeros({mine}, bucket.wire.defined() ? bucket.wire.options()
                                                                 : bucket.flat.options());
    }
    int64_t offset = 0;
    for (size_t k : bucket.params) {
      auto& p = params_[k];
      p.mutable_grad() = bucket.flat.narrow(0, offset, p.numel()).view(p.sizes());
      offset_in_bucket_[k] = offset;
      offset += p.numel();
      bucket_of_[k] = b;
    }
  }
  stats_.num_buckets = static_cast<int64_t>(buckets_.size());
}

void DdpEngine::install_hooks() {
  for (size_t k = 0; k < params_.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[k]);
    if (!acc) {
      throw Error(ErrorKind::kInternal, "DdpEngine: parameter without a gradient accumulator");
    }
    auto hook = std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, k](const torch::autograd::variable_list& outputs,
                  const torch::autograd::variable_list& /*inputs*/) {
          std::lock_guard<std::mutex> lock(mu_);
          on_grad_ready(k);
          return outputs;
        });
    hook_keys_.push_back(acc->add_post_hook(std::move(hook)));
    accumulators_.push_back(std::move(acc));
  }
}

void DdpEngine::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) bucket.flat.zero_();
  for (size_t k = 0; k < params_.size(); ++k) {
    // An optimizer or user code may have replaced .grad; restore the bucket view.
    auto& grad = params_[k].mutable_grad();
    const auto& flat = buckets_[bucket_of_[k]].flat;
    if (!grad.defined() || !grad.is_alias_of(flat)) {
      grad = flat.narrow(0, offset_in_bucket_[k], params_[k].numel()).view(params_[k].sizes());
    }
  }
}

void DdpEngine::prepare_backward(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = sync;
  next_to_launch_ = 0;
  for (auto& bucket : buckets_) {
    bucket.pending = static_cast<int64_t>(bucket.params.size());
    bucket.work.reset();
  }
  stats_.hooks_fired = 0;
  stats_.hooks_fired_at_first_launch = -1;
  stats_.buckets_launched_in_backward = 0;
}

void DdpEngine::on_grad_ready(size_t param_index) {
  if (!armed_) return;
  ++stats_.hooks_fired;
  Bucket& bucket = buckets_[bucket_of_[param_index]];
  --bucket.pending;
  if (options_.overlap) {
    const size_t before = next_to_launch_;
    launch_ready_in_order();
    if (next_to_launch_ > before && stats_.hooks_fired_at_first_launch < 0) {
      stats_.hooks_fired_at_first_launch = stats_.hooks_fired;
    }
    stats_.buckets_launched_in_backward += static_cast<int64_t>(next_to_launch_ - before);
  }
  // Drive progress of what is in flight (MPI progresses non-blocking collectives only
  // inside MPI calls).
  for (size_t b = 0; b < next_to_launch_; ++b) {
    if (buckets_[b].work) buckets_[b].work->test();
  }
}

void DdpEngine::launch_ready_in_order() {
  while (next_to_launch_ < buckets_.size() && buckets_[next_to_launch_].pending <= 0) {
    launch(buckets_[next_to_launch_]);
    ++next_to_launch_;
  }
}

void DdpEngine::launch(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  if (options_.shard_optimizer) {
    const torch::Tensor& send = bucket.wire.defined() ? bucket.wire : bucket.flat;
    ReduceOp op = ReduceOp::kAvg;
    if (bucket.wire.defined()) {
      bucket.wire.copy_(bucket.flat);
      bucket.wire.div_(comm_.size());
      op = ReduceOp::kSum;
    }
    bucket.work = comm_.reduce_scatter_async(send.data_ptr(), bucket.shard.data_ptr(),
                                             bucket.counts, to_dtype(send.scalar_type()), op);
    return;
  }
  if (bucket.wire.defined()) {
    bucket.wire.copy_(bucket.flat);
    bucket.wire.div_(comm_.size());
    bucket.work = all_reduce_async(comm_, bucket.wire, ReduceOp::kSum);
  } else {
    bucket.work = all_reduce_async(comm_, bucket.flat, ReduceOp::kAvg);
  }
}

void DdpEngine::finish_backward() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) {
    throw Error(ErrorKind::kInternal, "DdpEngine::finish_backward without prepare_backward(true)");
  }
  // Buckets with parameters that got no gradient (unused in this forward) are launched now,
  // still in bucket order, so every rank issues the same sequence of collectives.
  while (next_to_launch_ < buckets_.size()) {
    launch(buckets_[next_to_launch_]);
    ++next_to_launch_;
  }
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) {
    bucket.work->wait();
    bucket.work.reset();
    if (options_.shard_optimizer) {
      bucket.flat.narrow(0, bucket.my_offset, bucket.shard.numel()).copy_(bucket.shard);
    } else if (bucket.wire.defined()) {
      bucket.flat.copy_(bucket.wire);
    }
  }
  armed_ = false;
}

std::vector<torch::Tensor> DdpEngine::owned_parameters() const {
  std::vector<torch::Tensor> out;
  for (size_t k = 0; k < params_.size(); ++k) {
    if (owner_[k] == comm_.rank()) out.push_back(params_[k]);
  }
  return out;
}

void DdpEngine::gather_parameters() {
  if (!options_.shard_optimizer) {
    throw Error(ErrorKind::kInternal, "DdpEngine::gather_parameters without shard_optimizer");
  }
  torch::NoGradGuard no_grad;
  const int me = comm_.rank();
  for (auto& bucket : buckets_) {
    for (size_t k : bucket.params) {
      if (owner_[k] != me) continue;
      bucket.flat.narrow(0, offset_in_bucket_[k], params_[k].numel()).copy_(params_[k].view(-1));
    }
    comm_.all_gather_into(bucket.flat.data_ptr(), bucket.counts,
                          to_dtype(bucket.flat.scalar_type()));
    for (size_t k : bucket.params) {
      if (owner_[k] == me) continue;
      params_[k].view(-1).copy_(bucket.flat.narrow(0, offset_in_bucket_[k], params_[k].numel()));
    }
  }
}

uint64_t DdpEngine::shard_buffer_bytes() const {
  uint64_t n = 0;
  for (const auto& b : buckets_) {
    if (b.shard.defined()) n += static_cast<uint64_t>(b.shard.numel() * b.shard.element_size());
  }
  return n;
}

double DdpEngine::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  // Sum of squares of the per-parameter norms, in double, over what this rank owns.
  double sq = 0.0;
  const std::vector<torch::Tensor> mine = owned_parameters();
  for (const auto& p : mine) {
    const double n = p.grad().norm(2).item<double>();
    sq += n * n;
  }
  if (options_.shard_optimizer) control_.all_reduce(&sq, 1, DType::kFloat64, ReduceOp::kSum);
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (const auto& p : mine) p.grad().mul_(coef);
  }
  return norm;
}

void DdpEngine::broadcast_buffers() {
  torch::NoGradGuard no_grad;
  for (auto& buffer : model_->buffers()) broadcast(comm_, buffer, 0);
}

}  // namespace ddp
