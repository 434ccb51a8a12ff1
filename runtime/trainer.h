// Trainer: the data-parallel training loop with PyTorch Lightning's vocabulary
// (max_epochs, max_steps, accumulate_grad_batches, gradient_clip_val, val_check_interval).
//
// Every rank runs one Trainer over its DistributedSampler shard; the DdpEngine averages
// gradients, so all replicas take identical optimizer steps. Set-up failures on any rank
// (bad data file, batch larger than the shard, no GPU, model mismatch) are agreed on with
// run_agreed and surface on every rank as the same ddp::AgreedError.
//
// The Trainer exposes everything needed to resume exactly (TrainerState, model, optimizer,
// schedule, per-rank RNG): the checkpoint code reads and restores these.
//
// Thread-safety: one thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <torch/types.h>

#include "collectives/communicator.h"
#include "runtime/config.h"
#include "runtime/data/dataset.h"
#include "runtime/data/distributed_sampler.h"
#include "runtime/models/model.h"
#include "runtime/mixed_precision.h"
#include "runtime/optim.h"
#include "runtime/topology.h"

namespace torch::optim {
class Optimizer;
}

namespace ddp {

class DdpEngine;
class Checkpointer;
class CsvLogger;
class ProgressReporter;

// Position in training. All counters are global (identical on every rank).
struct TrainerState {
  int64_t epoch = 0;           // current epoch (0-based)
  int64_t global_step = 0;     // optimizer steps taken
  int64_t batch_in_epoch = 0;  // next micro-batch index within the epoch
};

struct TrainResult {
  int64_t steps = 0;
  int64_t epochs = 0;  // epochs started
  double final_train_loss = NAN;
  std::optional<double> final_val_loss;
  double samples_per_s = 0.0;  // global samples per second over the whole fit
  double wall_s = 0.0;
  int64_t samples = 0;  // global samples consumed
  int world_size = 1;
  bool preempted = false;  // stopped by a signal (coordinated across ranks)
  int signal = 0;          // the signal this rank saw (0 if it only learned it from a peer)
  std::string backend;
  std::string run_dir;
  // Cost of the per-step stop agreement (one 8-byte all-reduce per step) on this rank: its
  // total seconds, against the seconds of the training loop it ran in. Includes waiting for a
  // slower rank at that point, so it is an upper bound on what the agreement itself costs.
  double preemption_check_s = 0.0;
  double train_loop_s = 0.0;
  std::string checkpoint_json;  // Checkpointer::summary_json() (rank 0's view)
  // Memory of the optimizer state (ddp.zero_stage 1 shards it): bytes on the rank holding
  // the most and the least, and the reduce-scatter receive buffers the sharding adds per rank.
  int64_t zero_stage = 0;
  uint64_t optimizer_state_bytes_max = 0;
  uint64_t optimizer_state_bytes_min = 0;
  uint64_t shard_buffer_bytes = 0;
};

class Trainer {
 public:
  // `control` is a host (MPI) communicator over all ranks; gradients travel over it too
  // unless the model is on CUDA (then an NCCL communicator is created on top of it).
  // Throws ddp::AgreedError for set-up failures.
  Trainer(Config config, Communicator& control);
  ~Trainer();

  TrainResult fit();

  // Makes fit() return after this optimizer step (all ranks must ask for the same step), as
  // a preemption does: a checkpoint is saved first when checkpointing is enabled.
  void stop_after_step(int64_t step) { stop_after_step_ = step; }

  // Runs validation over this rank's shard and returns the global mean loss (collective).
  double validate();

  // --- State for checkpointing and tests.
  const Config& config() const { return config_; }
  Model& model() { return *model_; }
  std::shared_ptr<Model> model_ptr() { return model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  TrainerState& state() { return state_; }
  DdpEngine& engine() { return *engine_; }
  Communicator& grad_comm() { return *grad_comm_; }
  Checkpointer* checkpointer() { return checkpointer_.get(); }
  Precision precision() const { return precision_; }
  GradScaler* grad_scaler() { return scaler_.get(); }  // null unless precision is 16-mixed
  const std::string& run_dir() const { return run_dir_; }
  const Topology& topology() const { return topology_; }  // hosts and local ranks
  // Whether validation runs at all (validation data and trainer.check_val_every_n_epoch > 0).
  bool validates() const;
  std::string hparams_json() const;
  double current_lr() const;
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  void setup();
  void train_step(const std::vector<int64_t>& epoch_indices, int64_t first_micro,
                  int64_t num_micro, double* loss_out);
  Batch load_batch(const Dataset& data, const std::vector<int64_t>& indices) const;
  bool should_validate(int64_t micro_done, int64_t step) const;
  void log_step(int64_t epoch, double loss, std::optional<double> val_loss);
  std::map<std::string, double> monitored_metrics() const;

  Config config_;
  Communicator& control_;
  std::unique_ptr<Communicator> owned_grad_comm_;
  Communicator* grad_comm_ = nullptr;
  torch::Device device_{torch::kCPU};
  Topology topology_;
  Precision precision_ = Precision::kFp32;
  std::unique_ptr<GradScaler> scaler_;

  DataSplits data_;
  std::shared_ptr<Model> model_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> schedule_;
  std::unique_ptr<DdpEngine> engine_;
  std::unique_ptr<DistributedSampler> sampler_;
  std::unique_ptr<CsvLogger> csv_;
  std::unique_ptr<ProgressReporter> progress_;
  std::unique_ptr<Checkpointer> checkpointer_;
  int64_t stop_after_step_ = -1;

  TrainerState state_;
  int64_t micro_per_epoch_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  std::string run_dir_;

  // Logging window (rank-local running loss since the last log row).
  double window_loss_sum_ = 0.0;
  int64_t window_steps_ = 0;
  double last_train_loss_ = NAN;
  std::optional<double> last_val_loss_;
  double fit_start_s_ = 0.0;
  int64_t samples_done_ = 0;
};

}  // namespace ddp
