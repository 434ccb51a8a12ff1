#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collectives/agreement.h"
#include "collectives/error.h"
#include "checkpoint/file_system.h"
#include "collectives/mpi_communicator.h"
#include "runtime/checkpointer.h"
#include "runtime/cuda_seam.h"
#include "runtime/ddp_engine.h"
#include "runtime/metrics.h"
#include "runtime/optimizer_update.h"
#include "runtime/fault_injection.h"
#include "runtime/state_io.h"
#include "runtime/stop_signal.h"
#include "runtime/topology.h"

#if defined(DDP_WITH_NCCL)
#include "collectives/cuda_check.h"
#include "collectives/nccl_communicator.h"
#endif

namespace ddp {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

torch::ScalarType wire_dtype(const std::string& compression) {
  if (compression == "fp16") return torch::kFloat16;
  if (compression == "bf16") return torch::kBFloat16;
  return torch::kFloat32;
}

// Mean of `value` over all ranks (host collective).
double global_mean(Communicator& comm, double value) {
  comm.all_reduce(&value, 1, DType::kFloat64, ReduceOp::kAvg);
  return value;
}

}  // namespace

Trainer::Trainer(Config config, Communicator& control)
    : config_(std::move(config)), control_(control) {
  run_agreed(control_, "set-up", [&] { setup(); });
  run_agreed(control_, "model synchronisation", [&] {
    DdpOptions options;
    options.bucket_cap_mb = config_.ddp.bucket_cap_mb;
    options.wire_dtype = wire_dtype(config_.ddp.compression);
    options.shard_optimizer = config_.ddp.zero_stage == 1;
    engine_ = std::make_unique<DdpEngine>(model_, *grad_comm_, control_, options);
    // Stage 1: this rank's optimizer holds (and steps) the parameters it owns only.
    optimizer_ = make_optimizer(config_.optimizer, engine_->owned_parameters());
  });
  // Per-rank RNG stream (dropout etc.), distinct per rank, reproducible per seed.
  torch::manual_seed(static_cast<uint64_t>(config_.trainer.seed) + 1 +
                     static_cast<uint64_t>(control_.rank()));
  run_agreed(control_, "checkpoint set-up", [&] {
    // Saves get their own communicator so that an async save never interleaves with the
    // training loop's collectives.
    std::unique_ptr<Communicator> save_comm;
    if (auto* mpi = dynamic_cast<MpiCommunicator*>(&control_)) {
      save_comm = std::make_unique<MpiCommunicator>(control_.options(), mpi->mpi_comm());
    } else {
      throw Error(ErrorKind::kInternal, "checkpointing needs an MPI control communicator");
    }
    checkpointer_ = std::make_unique<Checkpointer>(*this, control_, std::move(save_comm),
                                                   std::make_shared<ckpt::PosixFileSystem>());
  });
  if (config_.checkpoint.resume != "none") checkpointer_->resume(config_.checkpoint.resume);
  StopSignal::reset();
  StopSignal::install(parse_signal_list(config_.preemption.signals));
}

std::string Trainer::hparams_json() const {
  const auto& m = config_.model;
  nlohmann::json j{{"name", m.name},         {"device", m.device},
                   {"hidden_sizes", m.hidden_sizes}, {"channels", m.channels},
                   {"dropout", m.dropout},   {"d_model", m.d_model},
                   {"n_layers", m.n_layers}, {"n_heads", m.n_heads},
                   {"d_ff", m.d_ff},         {"options", m.options}};
  // What the model factory needs from the dataset, so that a model can be rebuilt from the
  // checkpoint alone (load_from_checkpoint).
  const DatasetInfo& info = data_.train->info();
  j["data_info"] = {{"task", task_name(info.task)},
                    {"input_shape", info.input_shape},
                    {"num_outputs", info.num_outputs}};
  return j.dump();
}

double Trainer::current_lr() const {
  return schedule_->lr_at(std::max<int64_t>(0, state_.global_step - 1));
}

std::map<std::string, double> Trainer::monitored_metrics() const {
  std::map<std::string, double> m;
  if (!std::isnan(last_train_loss_)) m["train_loss"] = last_train_loss_;
  if (last_val_loss_) m["val_loss"] = *last_val_loss_;
  return m;
}

// The stop handlers stay installed after the Trainer is gone: a second SIGTERM that arrives
// while the process saves and shuts down must not kill it (exit 143 instead of
// preemption.exit_code), and the flag is harmless once training is over.
Trainer::~Trainer() = default;

void Trainer::setup() {
  const auto& tc = config_.trainer;
  const int rank = control_.rank();
  const int world = control_.size();

  if (config_.model.device == "cuda") {
    if (!torch_cuda_available()) {
      throw Error(ErrorKind::kInvalidArgument,
                  "model.device=cuda, but no CUDA GPU is usable here (no GPU visible, or this "
                  "LibTorch was built without CUDA); use model.device=cpu");
    }
    device_ = torch::Device(torch::kCUDA, 0);
  }
  std::string backend = config_.ddp.backend;
  if (backend == "auto") backend = device_.is_cuda() ? "nccl" : "mpi";
  topology_ = discover_topology(control_);
  const Topology& topology = topology_;
  if (rank == 0) {
    std::fprintf(stderr, "ddp-train: topology: %s\n", topology.describe().c_str());
    if (topology.hosts.size() > 1) {
      std::fprintf(stderr, "ddp-train: network (rank 0's view): %s\n",
                   network_summary(backend == "nccl").c_str());
    }
  }
  if (backend == "nccl" && !device_.is_cuda()) {
    throw Error(ErrorKind::kInvalidArgument,
                "ddp.backend=nccl needs model.device=cuda (NCCL reduces GPU memory)");
  }
  if (backend == "mpi" && device_.is_cuda()) {
    throw Error(ErrorKind::kInvalidArgument,
                "ddp.backend=mpi carries host memory only; use ddp.backend=nccl (or auto) with "
                "model.device=cuda");
  }
  if (backend == "nccl") {
#if defined(DDP_WITH_NCCL)
    auto* mpi = dynamic_cast<MpiCommunicator*>(&control_);
    if (!mpi) throw Error(ErrorKind::kInternal, "the NCCL backend needs an MPI bootstrap");
    // One GPU per rank: the rank's index within its host picks it. More ranks on a host
    // than GPUs would share GPUs behind the user's back (or run out of memory later).
    const int gpus = cuda_device_count_or_zero();
    if (topology.mine.local_size > gpus) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("host {} runs {} ranks but has {} GPU(s) visible: run at most {} "
                              "rank(s) per host (mpirun --map-by ppr:{}:node), or make more "
                              "GPUs visible (CUDA_VISIBLE_DEVICES)",
                              topology.mine.host, topology.mine.local_size, gpus, gpus, gpus));
    }
    auto nccl = std::make_unique<NcclCommunicator>(*mpi, topology.mine.local_rank,
                                                   control_.options());
    device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(nccl->device()));
    nccl->set_compute_stream(static_cast<CUstream_st*>(torch_current_cuda_stream()));
    owned_grad_comm_ = std::move(nccl);
#else
    throw Error(ErrorKind::kInvalidArgument,
                "ddp.backend=nccl, but this build has no NCCL backend (DDP_WITH_NCCL=OFF)");
#endif
  }
  grad_comm_ = owned_grad_comm_ ? owned_grad_comm_.get() : &control_;
  precision_ = parse_precision(tc.precision);
  check_precision_supported(precision_, device_);
  if (precision_ == Precision::kFp16Mixed) scaler_ = std::make_unique<GradScaler>();

  data_ = make_datasets(config_.data, tc.seed);
  // Same initial weights on every rank for a given seed (rank 0's are broadcast anyway).
  torch::manual_seed(static_cast<uint64_t>(tc.seed));
  model_ = ModelRegistry::global().create(config_.model, data_.train->info());
  model_->to(device_);

  sampler_ = std::make_unique<DistributedSampler>(data_.train->size(), rank, world,
                                                  config_.data.shuffle, tc.seed,
                                                  config_.data.drop_last);
  const int64_t shard = sampler_->num_samples();
  micro_per_epoch_ = config_.data.drop_last ? shard / tc.batch_size
                                            : (shard + tc.batch_size - 1) / tc.batch_size;
  if (micro_per_epoch_ == 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("trainer.batch_size={} is larger than this rank's shard of {} "
                            "samples ({} training samples over {} ranks); lower "
                            "trainer.batch_size, add data, or set data.drop_last=false",
                            tc.batch_size, shard, data_.train->size(), world));
  }
  steps_per_epoch_ =
      (micro_per_epoch_ + tc.accumulate_grad_batches - 1) / tc.accumulate_grad_batches;
  const int64_t epoch_steps = tc.max_epochs > 0 ? tc.max_epochs * steps_per_epoch_ : -1;
  total_steps_ = tc.max_steps > 0 && epoch_steps > 0 ? std::min(tc.max_steps, epoch_steps)
                 : tc.max_steps > 0                   ? tc.max_steps
                                                      : epoch_steps;

  schedule_ = std::make_unique<LrSchedule>(config_.scheduler, config_.optimizer.lr, total_steps_);

  run_dir_ = (std::filesystem::path(tc.default_root_dir) / tc.name).string();
  if (rank == 0) {
    std::error_code ec;
    std::filesystem::create_directories(run_dir_, ec);
    if (ec) {
      throw Error(ErrorKind::kIOError,
                  fmt::format("cannot create run directory '{}': {}", run_dir_, ec.message()));
    }
    std::ofstream(std::filesystem::path(run_dir_) / "config.yaml") << config_.resolved_yaml;
    csv_ = std::make_unique<CsvLogger>(
        (std::filesystem::path(run_dir_) / "metrics.csv").string(),
        std::vector<std::string>{"epoch", "step", "train_loss", "val_loss", "lr",
                                 "samples_per_s"});
    progress_ = std::make_unique<ProgressReporter>(tc.progress_bar);
  }
}

Batch Trainer::load_batch(const Dataset& data, const std::vector<int64_t>& indices) const {
  Batch b = data.get(indices);
  if (device_.is_cuda()) {
    b.x = b.x.to(device_, /*non_blocking=*/true);
    b.y = b.y.to(device_, /*non_blocking=*/true);
  }
  return b;
}

void Trainer::train_step(const std::vector<int64_t>& epoch_indices, int64_t first_micro,
                         int64_t num_micro, double* loss_out) {
  const int64_t bs = config_.trainer.batch_size;
  const Task task = data_.train->info().task;
  const bool sync_buffers = control_.size() > 1 && !model_->buffers().empty();
  maybe_inject_stall(control_.rank(), state_.global_step + 1);
  engine_->zero_grad();
  set_learning_rate(*optimizer_, schedule_->lr_at(state_.global_step));
  double loss_sum = 0.0;
  for (int64_t m = 0; m < num_micro; ++m) {
    const int64_t begin = (first_micro + m) * bs;
    const int64_t end = std::min<int64_t>(begin + bs, static_cast<int64_t>(epoch_indices.size()));
    std::vector<int64_t> idx(epoch_indices.begin() + begin, epoch_indices.begin() + end);
    if (sync_buffers) engine_->broadcast_buffers();
    Batch batch = load_batch(*data_.train, idx);
    torch::Tensor loss;
    {
      AutocastGuard autocast(precision_, device_);  // forward and loss only, as Lightning
      loss = compute_loss(task, model_->forward(batch.x), batch.y) /
             static_cast<double>(num_micro);
    }
    engine_->prepare_backward(/*sync=*/m == num_micro - 1);
    (scaler_ ? scaler_->scale(loss) : loss).backward();
    loss_sum += loss.item<double>();
    samples_done_ += static_cast<int64_t>(idx.size()) * control_.size();
  }
  UpdateStep update;
  update.step = state_.global_step + 1;
  update.gradient_clip_val = config_.trainer.gradient_clip_val;
  // An async save may still be copying the parameters.
  update.before_update = [this] { checkpointer_->before_update(); };
  update_parameters(*model_, *engine_, *optimizer_, scaler_.get(), control_, update);
  *loss_out = loss_sum;
}

bool Trainer::should_validate(int64_t micro_done, int64_t step) const {
  const auto& tc = config_.trainer;
  if (tc.check_val_every_n_epoch == 0 || data_.val->size() == 0) return false;
  if ((state_.epoch + 1) % tc.check_val_every_n_epoch != 0) return false;
  if (tc.val_check_interval > 1.0) {
    return step % static_cast<int64_t>(tc.val_check_interval) == 0;
  }
  const int64_t every = std::max<int64_t>(
      1, static_cast<int64_t>(tc.val_check_interval * static_cast<double>(micro_per_epoch_)));
  return micro_done % every == 0 || micro_done == micro_per_epoch_;
}

double Trainer::validate() {
  torch::NoGradGuard no_grad;
  model_->eval();
  const int64_t n = data_.val->size();
  const int64_t bs = config_.trainer.batch_size;
  const Task task = data_.val->info().task;
  double sums[2] = {0.0, 0.0};  // loss * samples, samples
  std::vector<int64_t> idx;
  int64_t batches = 0;
  for (int64_t i = control_.rank(); i < n; i += control_.size()) {
    idx.push_back(i);
    const bool last = i + control_.size() >= n;
    if (static_cast<int64_t>(idx.size()) == bs || (last && !idx.empty())) {
      if (config_.trainer.limit_val_batches >= 0 && batches >= config_.trainer.limit_val_batches)
        break;
      Batch b = load_batch(*data_.val, idx);
      AutocastGuard autocast(precision_, device_);
      const double loss = compute_loss(task, model_->forward(b.x), b.y).item<double>();
      sums[0] += loss * static_cast<double>(idx.size());
      sums[1] += static_cast<double>(idx.size());
      idx.clear();
      ++batches;
    }
  }
  model_->train();
  control_.all_reduce(sums, 2, DType::kFloat64, ReduceOp::kSum);
  return sums[1] > 0 ? sums[0] / sums[1] : NAN;
}

bool Trainer::validates() const {
  return config_.trainer.check_val_every_n_epoch > 0 && data_.val && data_.val->size() > 0;
}

void Trainer::log_step(int64_t epoch, double loss, std::optional<double> val_loss) {
  const double elapsed = now_s() - fit_start_s_;
  const double sps = elapsed > 0 ? static_cast<double>(samples_done_) / elapsed : 0.0;
  if (control_.rank() != 0) return;
  std::map<std::string, double> row{{"epoch", static_cast<double>(epoch)},
                                    {"step", static_cast<double>(state_.global_step)},
                                    {"lr", schedule_->lr_at(std::max<int64_t>(
                                               0, state_.global_step - 1))},
                                    {"samples_per_s", sps}};
  if (!std::isnan(loss)) row["train_loss"] = loss;
  if (val_loss) row["val_loss"] = *val_loss;
  csv_->log(row);
  ProgressSnapshot snap;
  snap.epoch = epoch;
  snap.step = state_.global_step;
  snap.total_steps = total_steps_;
  snap.loss = loss;
  snap.samples_per_s = sps;
  snap.elapsed_s = elapsed;
  snap.val_loss = val_loss;
  progress_->update(snap);
}

TrainResult Trainer::fit() {
  const auto& tc = config_.trainer;
  fit_start_s_ = now_s();
  samples_done_ = 0;
  model_->train();
  if (control_.rank() == 0) {
    progress_->message(fmt::format(
        "ddp-train: {} ranks, backend {}, model {} ({} parameters), {} steps/epoch, {} steps "
        "planned, global batch {}",
        control_.size(), grad_comm_->backend_name(), config_.model.name,
        [&] {
          int64_t n = 0;
          for (const auto& p : model_->parameters()) n += p.numel();
          return n;
        }(),
        steps_per_epoch_, total_steps_,
        tc.batch_size * control_.size() * tc.accumulate_grad_batches));
  }
  int64_t epochs_started = 0;
  bool preempted = false;
  bool stopped_early = false;  // stop_after_step(): saves as a preemption does
  double check_s = 0.0;
  // The stop agreement is pipelined: after step k every rank starts a non-blocking MAX
  // all-reduce of its "signal seen" flag and waits for it after step k + 1, so the all-reduce
  // completes during step k + 1's communication instead of adding a synchronisation point.
  // Every rank learns a signal after the same step (one step after it arrived).
  auto stop_flag = std::make_unique<int64_t[]>(2);
  int stop_slot = 0;
  std::unique_ptr<Work> stop_work;
  // When a step throws (a collective timed out, a rank died) the job is ending: abandon an
  // agreement in flight (with the memory it writes to) instead of waiting out its timeout too.
  struct AbandonOnThrow {
    std::unique_ptr<Work>& work;
    std::unique_ptr<int64_t[]>& flags;
    const int uncaught = std::uncaught_exceptions();
    ~AbandonOnThrow() {
      if (std::uncaught_exceptions() > uncaught && work) {
        (void)work.release();
        (void)flags.release();
      }
    }
  } abandon_on_throw{stop_work, stop_flag};
  auto agreed_stop = [&]() {  // waits for the agreement in flight, if any
    if (!stop_work) return false;
    const double t0 = now_s();
    stop_work->wait();
    check_s += now_s() - t0;
    stop_work.reset();
    return stop_flag[stop_slot ^ 1] != 0;
  };
  const double loop_start_s = now_s();
  bool done = total_steps_ >= 0 && state_.global_step >= total_steps_;
  while (!done) {
    if (tc.max_epochs > 0 && state_.epoch >= tc.max_epochs) break;
    ++epochs_started;
    sampler_->set_epoch(state_.epoch);
    const std::vector<int64_t> indices = sampler_->indices();
    while (!done && state_.batch_in_epoch < micro_per_epoch_) {
      const int64_t num_micro =
          std::min(tc.accumulate_grad_batches, micro_per_epoch_ - state_.batch_in_epoch);
      double loss = 0.0;
      train_step(indices, state_.batch_in_epoch, num_micro, &loss);
      state_.batch_in_epoch += num_micro;
      ++state_.global_step;
      window_loss_sum_ += loss;
      ++window_steps_;

      const int64_t epoch_index = state_.epoch;  // 0-based, as {epoch} and metrics.csv show it
      const bool validating = should_validate(state_.batch_in_epoch, state_.global_step);
      const bool last_step = total_steps_ >= 0 && state_.global_step >= total_steps_;
      const bool log_now =
          state_.global_step % tc.log_every_n_steps == 0 || validating || last_step;
      double mean = NAN;
      if (log_now) {
        mean = global_mean(control_, window_loss_sum_ / window_steps_);
        last_train_loss_ = mean;
        window_loss_sum_ = 0.0;
        window_steps_ = 0;
      }
      // Preemption: a signal on any rank stops every rank after the same step (the agreement
      // started after the previous step; its cost is in docs/performance.md).
      if (agreed_stop()) preempted = true;
      if (stop_after_step_ >= 0 && state_.global_step >= stop_after_step_) stopped_early = true;
      const bool stop = preempted || stopped_early;
      if (!stop && !last_step) {
        const double t0 = now_s();
        stop_flag[stop_slot] = StopSignal::requested() ? 1 : 0;
        stop_work = control_.all_reduce_async(&stop_flag[stop_slot], 1, DType::kInt64,
                                              ReduceOp::kMax);
        stop_slot ^= 1;
        check_s += now_s() - t0;
      }
      const bool epoch_end = state_.batch_in_epoch >= micro_per_epoch_;
      if (epoch_end) {  // a save from here on resumes at the next epoch's start
        ++state_.epoch;
        state_.batch_in_epoch = 0;
      }
      // Lightning's order within a step: on_train_batch_end (the step trigger; metrics as
      // logged so far, so the validation below is not in them yet), the validation,
      // on_validation_end, and at the end of the epoch or of training on_train_epoch_end.
      if (!stop) checkpointer_->after_step(epoch_index, monitored_metrics());
      std::optional<double> val;
      if (validating) {
        val = validate();
        last_val_loss_ = val;
      }
      if (log_now) log_step(epoch_index, mean, val);
      if (!stop) {
        if (validating) checkpointer_->after_validation(epoch_index, monitored_metrics());
        if (epoch_end || last_step) checkpointer_->after_epoch(epoch_index, monitored_metrics());
      }
      if (last_step || stop) {
        done = true;
        break;
      }
      if (epoch_end) break;
    }
  }
  // Leaving by max_epochs with an agreement in flight: finish it (a signal that came during
  // the last step still gets its save).
  if (agreed_stop()) preempted = true;
  const double loop_s = now_s() - loop_start_s;
  if (preempted && config_.preemption.save && config_.checkpoint.enabled) {
    if (control_.rank() == 0) {
      progress_->message(fmt::format("ddp-train: stop requested by a signal; saving a "
                                     "checkpoint at step {} and exiting",
                                     state_.global_step));
    }
    checkpointer_->save_if_unsaved(monitored_metrics());
  } else if (stopped_early && config_.checkpoint.enabled) {
    checkpointer_->save_if_unsaved(monitored_metrics());
  }
  checkpointer_->on_train_end();
  if (control_.rank() == 0) progress_->finish();

  TrainResult r;
  r.steps = state_.global_step;
  r.epochs = epochs_started;
  r.final_train_loss = last_train_loss_;
  r.final_val_loss = last_val_loss_;
  r.wall_s = now_s() - fit_start_s_;
  r.samples = samples_done_;
  r.samples_per_s = r.wall_s > 0 ? static_cast<double>(samples_done_) / r.wall_s : 0.0;
  r.world_size = control_.size();
  r.preempted = preempted;
  r.signal = StopSignal::last_signal();
  r.backend = grad_comm_->backend_name();
  r.run_dir = run_dir_;
  r.preemption_check_s = check_s;
  r.train_loop_s = loop_s;
  r.checkpoint_json = checkpointer_->summary_json();
  r.zero_stage = config_.ddp.zero_stage;
  int64_t state_bytes[2] = {0, 0};
  for (const auto& s : optimizer_sources(*optimizer_, *model_)) {
    state_bytes[0] += static_cast<int64_t>(s.bytes);
  }
  state_bytes[1] = -state_bytes[0];  // min as a max
  control_.all_reduce(state_bytes, 2, DType::kInt64, ReduceOp::kMax);
  r.optimizer_state_bytes_max = static_cast<uint64_t>(state_bytes[0]);
  r.optimizer_state_bytes_min = static_cast<uint64_t>(-state_bytes[1]);
  r.shard_buffer_bytes = engine_->shard_buffer_bytes();
  return r;
}

}  // namespace ddp
