// DdpEngine: data-parallel gradient synchronisation for one model replica per rank.
//
// At construction it checks that every rank built the same architecture (fingerprint of
// names/shapes/dtypes), broadcasts parameters and buffers from rank 0, and verifies with a
// content hash that all ranks now hold identical values (ddp::Error(kMismatch) otherwise,
// naming the ranks).
//
// Gradients live in flat per-bucket buffers: each parameter's .grad is a view into its
// bucket, so accumulation writes straight into the buffer the all-reduce reads. Parameters are
// assigned to buckets in reverse registration order (roughly the order backward produces
// them), up to bucket_cap_mb each. A post-hook on every parameter's grad accumulator counts
// down its bucket; when a bucket is complete it is all-reduced asynchronously *while backward
// is still running*. Buckets are launched strictly in bucket order on every rank (collectives
// must match across ranks), and every hook also drives progress of the launched ones.
//
// Usage per optimizer step:
//   engine.zero_grad();
//   for each micro-batch: engine.prepare_backward(/*sync=*/is_last_micro); loss.backward();
//   engine.finish_backward();   // now .grad = mean over all ranks' gradients
//
// ZeRO stage 1 (DdpOptions::shard_optimizer): each parameter has one owner rank
// (runtime/zero_partition.h); a bucket's parameters are laid out by owner, and the bucket is
// reduce-scattered instead of all-reduced, so finish_backward() leaves the mean gradient in
// the .grad of the parameters this rank owns only (the others' .grad hold this rank's local
// gradient: do not use them). The caller steps an optimizer over owned_parameters() and then
// calls gather_parameters(), which all-gathers the updated parameters bucket by bucket.
//
// Thread-safety: hooks may run on an autograd thread; internal state is guarded by mu_.
// The public methods are called from the training thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "collectives/communicator.h"

namespace torch::autograd {
struct Node;
}

namespace ddp {

struct DdpOptions {
  // Bucket size, MiB. Small buckets start communicating earlier; large ones amortise
  // per-call latency. 0 puts every parameter in its own bucket.
  double bucket_cap_mb = 25.0;
  // Element type on the wire. kFloat32 = no compression; kFloat16/kBFloat16 halve the bytes
  // (gradients are pre-divided by the world size so the 16-bit sum cannot overflow).
  torch::ScalarType wire_dtype = torch::kFloat32;
  // Launch all-reduces from autograd hooks (true) or only after backward (false; for the
  // benchmark that shows overlap pays).
  bool overlap = true;
  // ZeRO stage 1: reduce-scatter gradients to their parameters' owners (see above).
  bool shard_optimizer = false;
};

// Counters for tests and the benchmark (reset by prepare_backward).
struct DdpStats {
  int64_t num_buckets = 0;
  int64_t hooks_fired = 0;                 // grad-ready hooks in the current backward
  int64_t hooks_fired_at_first_launch = -1;  // -1: nothing launched from a hook
  int64_t buckets_launched_in_backward = 0;  // launched from hooks, before finish_backward
};

class DdpEngine {
 public:
  // grad_comm carries gradients (MPI for CPU tensors, NCCL for CUDA ones); control is a host
  // communicator for hashes. Both must outlive the engine; `model` must not gain or lose
  // parameters afterwards.
  DdpEngine(std::shared_ptr<torch::nn::Module> model, Communicator& grad_comm,
            Communicator& control, DdpOptions options);
  ~DdpEngine();
  DdpEngine(const DdpEngine&) = delete;
  DdpEngine& operator=(const DdpEngine&) = delete;

  void zero_grad();
  // sync=false: no communication in this backward (gradient accumulation).
  void prepare_backward(bool sync);
  // REQUIRES: a backward ran since prepare_backward(true). Launches any bucket whose
  // parameters received no gradient, waits for all, and leaves averaged gradients in .grad.
  void finish_backward();
  // Copies rank 0's buffers (e.g. BatchNorm running stats) to all ranks.
  void broadcast_buffers();

  // --- ZeRO stage 1 (shard_optimizer); without it every rank owns every parameter.
  bool sharded() const { return options_.shard_optimizer; }
  // Owner rank of each trainable parameter, in model.parameters() order.
  const std::vector<int>& owners() const { return owner_; }
  // The trainable parameters this rank owns, in model order (what its optimizer steps).
  std::vector<torch::Tensor> owned_parameters() const;
  // REQUIRES: sharded(); every rank updated its owned parameters. Collective over the
  // gradient communicator: afterwards every replica holds every owner's values (bitwise).
  // Uses the gradient buckets as staging: .grad is meaningless until the next zero_grad().
  void gather_parameters();
  // Global L2 norm of the gradients (sharded: of the owned ones, combined over the control
  // communicator; collective). Scales them by max_norm / (norm + 1e-6) when that is below 1,
  // as torch.nn.utils.clip_grad_norm_. Returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  // Bytes of the reduce-scatter receive buffers (0 unless sharded): the memory stage 1 adds.
  uint64_t shard_buffer_bytes() const;

  // Hash of parameters and buffers; equal on all ranks after a synchronised step.
  uint64_t state_hash() const;
  const DdpStats& stats() const { return stats_; }
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    torch::Tensor flat;    // gradients of the bucket's parameters, back to back
    torch::Tensor wire;    // 16-bit copy sent on the wire (compression), else undefined
    std::vector<size_t> params;  // indices into params_ (sharded: grouped by owner)
    int64_t pending = 0;         // hooks still to fire in this backward
    std::unique_ptr<Work> work;
    // Sharded only: elements per owner rank, this rank's part's offset, and the part's
    // reduce-scatter output (in the wire dtype when compressing).
    std::vector<size_t> counts;
    int64_t my_offset = 0;
    torch::Tensor shard;
  };

  void build_buckets();
  void install_hooks();
  void sync_initial_state();
  void on_grad_ready(size_t param_index);  // REQUIRES: mu_ held
  void launch(Bucket& bucket);             // REQUIRES: mu_ held
  void launch_ready_in_order();            // REQUIRES: mu_ held

  std::shared_ptr<torch::nn::Module> model_;
  Communicator& comm_;
  Communicator& control_;
  DdpOptions options_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;  // param index -> bucket index
  std::vector<int64_t> offset_in_bucket_;  // param index -> element offset in its bucket
  std::vector<int> owner_;         // param index -> owner rank (all this rank's unsharded)
  std::vector<Bucket> buckets_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keep hooks alive
  std::vector<uintptr_t> hook_keys_;

  std::mutex mu_;
  bool armed_ = false;           // guarded by mu_: hooks act only during a synced backward
  size_t next_to_launch_ = 0;    // guarded by mu_
  DdpStats stats_;               // guarded by mu_ while backward runs
};

}  // namespace ddp
