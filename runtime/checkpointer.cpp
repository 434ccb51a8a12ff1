#include "runtime/checkpointer.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <torch/torch.h>

#include <H5public.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_broadcast.h"
#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_reader.h"
#include "collectives/agreement.h"
#include "collectives/error.h"
#include "runtime/cuda_seam.h"
#include "runtime/ddp_engine.h"
#include "runtime/fault_injection.h"
#include "runtime/state_io.h"
#include "runtime/trainer.h"
#include "runtime/zero_checkpoint.h"

namespace ddp {
namespace {

namespace fs = std::filesystem;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string utc_now() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Adds `nice` to the calling thread's niceness (Linux: per thread; threads it starts inherit
// it). Training threads stay at theirs, so the save takes the CPU they leave idle. Failure only
// costs speed: a warning.
void lower_thread_priority(int nice, int rank) {
  if (nice <= 0) return;
#if defined(__linux__)
  const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
  errno = 0;
  const int current = ::getpriority(PRIO_PROCESS, tid);
  if ((current == -1 && errno != 0) ||
      ::setpriority(PRIO_PROCESS, tid, std::min(current + nice, 19)) != 0) {
    std::fprintf(stderr, "ddp-train: warning: rank %d: setpriority for the async save: %s\n",
                 rank, std::strerror(errno));
  }
#else
  (void)rank;
#endif
}

void log0(Communicator& comm, const std::string& line) {
  if (comm.rank() == 0) std::fprintf(stderr, "ddp-train: %s\n", line.c_str());
}

}  // namespace

Checkpointer::Checkpointer(Trainer& trainer, Communicator& control,
                           std::unique_ptr<Communicator> save_comm,
                           std::shared_ptr<ckpt::FileSystem> fs)
    : trainer_(trainer), control_(control), save_comm_(std::move(save_comm)), fs_(std::move(fs)) {
  const auto& cc = trainer_.config().checkpoint;
  dirpath_ = cc.dirpath.empty() ? (fs::path(trainer_.run_dir()) / "checkpoints").string()
                                : cc.dirpath;
  const auto& tc = trainer_.config().trainer;
  ckpt::LoopFacts facts;
  facts.validates = trainer_.validates();
  facts.check_val_every_n_epoch = tc.check_val_every_n_epoch;
  facts.val_check_interval = tc.val_check_interval;
  policy_ = std::make_unique<ckpt::CheckpointPolicy>(to_policy_options(cc, dirpath_), facts);
  if (control_.rank() == 0 && cc.enabled) {
    std::error_code ec;
    fs::create_directories(dirpath_, ec);
    if (ec) {
      throw Error(ErrorKind::kIOError, fmt::format("cannot create checkpoint directory '{}': {}",
                                                   dirpath_, ec.message()));
    }
  }
  last_save_time_s_ = now_s();
}

Checkpointer::~Checkpointer() {
  if (worker_.joinable()) worker_.join();
}

std::string Checkpointer::choose_and_read(const std::string& mode, ckpt::Checkpoint* out) {
  // One pass over the chosen file: the sidecar's whole-file checksum before HDF5 opens it,
  // then each tensor against its own checksum as it is read.
  const ckpt::ReadOptions opts;
  if (mode == "none") return "";
  if (mode != "auto" && mode != "last" && mode != "best") {
    if (!fs::exists(mode)) {
      throw Error(ErrorKind::kNotFound, fmt::format("checkpoint '{}' not found", mode));
    }
    *out = ckpt::read_checkpoint(mode, opts);
    return mode;
  }
  if (!fs::exists(dirpath_)) {
    if (mode == "auto") return "";
    throw Error(ErrorKind::kNotFound,
                fmt::format("resume={}: checkpoint directory '{}' does not exist", mode, dirpath_));
  }
  const int removed = ckpt::cleanup_temporaries(*fs_, dirpath_);
  if (removed > 0) {
    log0(control_, fmt::format("removed {} leftover temporary file(s) of an interrupted save in {}",
                               removed, dirpath_));
  }
  std::vector<std::string> candidates;
  if (mode == "best") {
    if (auto latest = ckpt::read_latest(*fs_, dirpath_)) {
      const auto meta = ckpt::read_meta((fs::path(dirpath_) / latest->file).string());
      const auto state = ckpt::CheckpointPolicy::from_json(meta.callbacks_json);
      if (!state.best_model_path.empty()) {
        candidates.push_back((fs::path(dirpath_) / state.best_model_path).string());
      }
    }
    if (candidates.empty()) {
      throw Error(ErrorKind::kNotFound,
                  fmt::format("resume=best: no best checkpoint recorded in '{}'", dirpath_));
    }
  } else {
    std::string warning;
    if (auto latest = ckpt::read_latest(*fs_, dirpath_, &warning)) {
      candidates.push_back(latest->path);
    } else if (!warning.empty()) {
      std::fprintf(stderr, "ddp-train: warning: %s; scanning the directory instead\n",
                   warning.c_str());
    }
    for (const auto& info : ckpt::list_checkpoints(*fs_, dirpath_)) {
      if (candidates.empty() || info.path != candidates.front()) candidates.push_back(info.path);
    }
  }
  for (const auto& path : candidates) {
    try {
      *out = ckpt::read_checkpoint(path, opts);
      return path;
    } catch (const Error& e) {
      // Written by a newer ddp-runtime: resuming from an older file would silently lose the
      // progress in it. The user upgrades instead.
      if (e.kind() == ErrorKind::kNewerVersion) throw;
      std::fprintf(stderr,
                   "ddp-train: warning: checkpoint '%s' is not usable (%s); trying the previous "
                   "one\n",
                   path.c_str(), e.what());
    }
  }
  *out = ckpt::Checkpoint{};
  if (mode == "auto") return "";
  throw Error(ErrorKind::kNotFound,
              fmt::format("resume={}: no valid checkpoint in '{}'", mode, dirpath_));
}

ResumeInfo Checkpointer::resume(const std::string& mode) {
  wait();  // loading changes what an async save in flight may still be copying
  // Rank 0 alone chooses, verifies and reads the file; the others receive it (no rank but 0
  // needs to see the directory: node-local disks, and one read instead of N on shared ones).
  ckpt::Checkpoint c;
  std::string chosen;
  const double t0 = now_s();
  run_agreed(control_, "resume: choosing and reading a checkpoint", [&] {
    if (control_.rank() == 0) chosen = choose_and_read(mode, &c);
  });
  const double t_read = now_s();
  chosen = broadcast_string(control_, chosen, 0);
  ResumeInfo info;
  info.file = chosen;
  if (chosen.empty()) {
    if (mode == "auto") log0(control_, "resume=auto: no checkpoint found, starting fresh");
    return info;
  }
  uint64_t bytes = 0;  // the whole checkpoint's, as rank 0 read it
  for (const auto& t : c.tensors) bytes += t.data.size();
  if (control_.size() > 1) {
    run_agreed(control_, fmt::format("resume from '{}': handing it to every rank", chosen), [&] {
      maybe_pause_at("resume", control_.rank(), 0);
      ckpt::BroadcastOptions options;
      const DdpEngine& engine = trainer_.engine();
      // ZeRO-1: each rank receives the optimizer state of the parameters it owns now only.
      if (engine.sharded()) {
        options.destination = optimizer_destinations(trainer_.model(), engine.owners());
      }
      ckpt::broadcast_checkpoint(control_, 0, &c, options);
    });
  }
  const double t_sent = now_s();
  run_agreed(control_, fmt::format("resume from '{}'", chosen), [&] {
    const auto& m = c.meta;
    const std::string fp = architecture_fingerprint(trainer_.model());
    load_model_state(trainer_.model(), c, /*strict=*/true);
    if (m.fingerprint != fp) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("checkpoint architecture fingerprint {} differs from the model's {}",
                              m.fingerprint, fp));
    }
    info.global_step = m.global_step;
    info.saved_world_size = m.world_size;
    if (m.weights_only) {
      log0(control_, "checkpoint holds weights only: optimizer and position start fresh");
      return;
    }
    load_optimizer_state(trainer_.optimizer(), trainer_.config().optimizer.name,
                         trainer_.model(), c);
    TrainerState& st = trainer_.state();
    st.epoch = m.epoch;
    st.global_step = m.global_step;
    const int world = control_.size();
    const int64_t per_micro = trainer_.config().trainer.batch_size * world;
    if (m.world_size == world && m.batch_size == trainer_.config().trainer.batch_size) {
      st.batch_in_epoch = m.batch_in_epoch;
    } else {
      info.resharded = true;
      st.batch_in_epoch = m.samples_in_epoch / per_micro;
    }
    const ckpt::RankState* mine = nullptr;
    for (const auto& r : c.ranks) {
      if (r.rank == control_.rank()) mine = &r;
    }
    if (mine && !info.resharded) set_cpu_rng_state(mine->cpu_rng);
    if (mine && !info.resharded && !mine->cuda_rng.empty()) set_cuda_rng_state(mine->cuda_rng);
    if (GradScaler* scaler = trainer_.grad_scaler(); scaler && !m.grad_scaler_json.empty()) {
      scaler->load_state_json(m.grad_scaler_json);
    }
    policy_->load_state_json(m.callbacks_json);
    if (fs::path(chosen).parent_path() == fs::path(dirpath_)) {
      policy_->set_resumed_from(fs::path(chosen).filename().string());
      last_committed_ = fs::path(chosen).filename().string();
      last_committed_step_ = m.global_step;
    }
    last_saved_step_ = m.global_step;
  });
  if (info.resharded) {
    log0(control_,
         fmt::format("checkpoint was written by {} ranks, resuming on {}: data position "
                     "recomputed from the global sample count (epoch {}, micro-batch {}); "
                     "per-rank RNG streams restart from the seed",
                     info.saved_world_size, control_.size(), trainer_.state().epoch,
                     trainer_.state().batch_in_epoch));
  }
  info.read_s = t_read - t0;
  info.handover_s = t_sent - t_read;
  info.load_s = now_s() - t_sent;
  log0(control_, fmt::format("resumed from '{}' at step {} ({:.1f} MB: read and verified on "
                             "rank 0 in {:.2f} s, handed to {} other rank(s) in {:.2f} s)",
                             chosen, info.global_step, static_cast<double>(bytes) / 1e6,
                             t_read - t0, control_.size() - 1, t_sent - t_read));
  resume_info_ = info;
  return info;
}

std::string Checkpointer::run_plan(const ckpt::SavePoint& point, const PlanFn& make_plan) {
  wait();  // the plan starts from the committed state; at most one save in flight
  std::string text;
  run_agreed(control_, fmt::format("checkpoint plan at step {}", point.step), [&] {
    if (control_.rank() != 0) return;
    const ckpt::SavePlan plan = make_plan(point, [this](const std::string& name) {
      return fs_->exists((fs::path(dirpath_) / name).string());
    });
    text = ckpt::CheckpointPolicy::plan_json(plan, policy_->options());
  });
  text = broadcast_string(control_, text, 0);
  const ckpt::SavePlan plan = ckpt::CheckpointPolicy::plan_from_json(text);
  if (!plan.warnings.empty() && !warned_monitor_) {
    warned_monitor_ = true;
    log0(control_, "warning: " + plan.warnings.front());
  }
  if (!plan.empty()) start_save(plan, point.metrics);
  return plan.file;
}

void Checkpointer::start_save(const ckpt::SavePlan& plan,
                              const std::map<std::string, double>& metrics) {
  const double t0 = now_s();
  maybe_pause_at("save", control_.rank(), trainer_.state().global_step);
  const auto& cfg = trainer_.config();
  const TrainerState& st = trainer_.state();
  const bool weights_only = cfg.checkpoint.save_weights_only;

  ckpt::SaveRequest req;
  auto& m = req.meta;
  m.global_step = st.global_step;
  m.epoch = st.epoch;
  m.batch_in_epoch = st.batch_in_epoch;
  m.samples_in_epoch = st.batch_in_epoch * cfg.trainer.batch_size * control_.size();
  m.world_size = control_.size();
  m.batch_size = cfg.trainer.batch_size;
  m.weights_only = weights_only;
  m.ddp_runtime_version = DDP_RUNTIME_VERSION;
  m.torch_version = TORCH_VERSION;
  m.hdf5_version = fmt::format("{}.{}.{}", H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE);
  m.created_utc = utc_now();
  m.config_yaml = cfg.resolved_yaml;
  m.hparams_json = trainer_.hparams_json();
  m.fingerprint = architecture_fingerprint(trainer_.model());
  m.optimizer_json = optimizer_json(trainer_.optimizer(), cfg.optimizer.name, trainer_.model(),
                                    cfg.ddp.zero_stage);
  m.scheduler_json = nlohmann::json{{"name", cfg.scheduler.name},
                                    {"step", st.global_step},
                                    {"lr", trainer_.current_lr()}}
                         .dump();
  m.metrics = metrics;
  if (const GradScaler* scaler = trainer_.grad_scaler()) m.grad_scaler_json = scaler->state_json();

  const std::string file = plan.file;
  m.callbacks_json = ckpt::CheckpointPolicy::to_json(plan.after, policy_->options());

  req.tensors = model_sources(trainer_.model());
  if (!weights_only) {
    auto opt = optimizer_sources(trainer_.optimizer(), trainer_.model());
    // ZeRO-1: each rank holds its parameters' state; the save brings it from there.
    if (trainer_.engine().sharded()) opt = exchange_sharded_sources(control_, std::move(opt));
    req.tensors.insert(req.tensors.end(), opt.begin(), opt.end());
  }
  req.rank_state.rank = control_.rank();
  req.rank_state.cpu_rng = cpu_rng_state();
  req.rank_state.cuda_rng = cuda_rng_state();
  req.rank_state.sampler_epoch = st.epoch;
  req.rank_state.sampler_index = st.batch_in_epoch * cfg.trainer.batch_size;
  req.final_path = (fs::path(dirpath_) / file).string();
  req.chunk_bytes = static_cast<size_t>(cfg.checkpoint.chunk_mb * 1024 * 1024);
  // A synchronous save keeps the training thread here until the commit: every rank may read
  // straight from the tensors. An async one needs the snapshot, in storage kept between saves,
  // and leaves the copies of parameters and optimizer state to the background thread and
  // before_update(), which the Trainer calls before the next optimizer.step().
  req.zero_copy = !cfg.checkpoint.async;
  req.defer_copies = cfg.checkpoint.async;
  if (!snapshot_buffer_) {
    snapshot_buffer_ = std::make_shared<ckpt::SnapshotBuffer>();
    if (cfg.model.device == "cuda") {  // page-locked: device-to-host at full bandwidth
      snapshot_buffer_->on_allocate = [](void* p, size_t n) { torch_pin_host_memory(p, n); };
      snapshot_buffer_->on_release = [](void* p) { torch_unpin_host_memory(p); };
    }
  }
  req.buffer = snapshot_buffer_;
  // Across hosts only the ranks on rank 0's host take shares: every rank holds the same
  // state, so nothing needs to cross the network to reach the writer.
  const Topology& topology = trainer_.topology();
  if (topology.hosts.size() > 1) req.share_ranks = topology.ranks_with_host_of(0);

  std::shared_ptr<ckpt::PendingSave> pending = ckpt::snapshot_for_save(*save_comm_, std::move(req));
  last_saved_step_ = st.global_step;

  // The policy learns of the save only once it is durable: a failed save changes nothing.
  auto finish = [this, p = pending, plan]() {
    p->finish(*save_comm_, *fs_);
    policy_->commit(plan);
    after_commit(plan);
  };
  if (cfg.checkpoint.async) {
    in_flight_ = true;
    worker_error_ = nullptr;
    unsnapshotted_ = pending;
    const int nice = static_cast<int>(cfg.checkpoint.async_nice);
    worker_ = std::thread([this, finish, nice] {
      try {
        lower_thread_priority(nice, save_comm_->rank());
        maybe_delay_background_snapshot(save_comm_->rank());
        finish();
      } catch (...) {
        worker_error_ = std::current_exception();
      }
    });
  } else {
    in_flight_ = true;
    try {
      finish();
    } catch (...) {
      worker_error_ = std::current_exception();
    }
    wait();
  }
  last_stall_s_ = now_s() - t0;
  total_stall_s_ += last_stall_s_;
}

void Checkpointer::after_commit(const ckpt::SavePlan& plan) {
  ++saves_completed_;
  last_committed_ = plan.file;
  last_committed_step_ = plan.after.last_global_step_saved;
  if (save_comm_->rank() != 0) return;
  for (const auto& f : plan.drop) {
    ckpt::remove_checkpoint(*fs_, (fs::path(dirpath_) / f).string());
  }
  if (!plan.link_last.empty()) {
    // last.h5 now names the file just saved; readers never see it disagree with its sidecar.
    try {
      ckpt::point_name_at(*fs_, (fs::path(dirpath_) / plan.file).string(),
                          (fs::path(dirpath_) / plan.link_last).string());
    } catch (const Error& e) {
      std::fprintf(stderr, "ddp-train: warning: could not point %s at %s: %s\n",
                   plan.link_last.c_str(), plan.file.c_str(), e.what());
    }
  }
}

void Checkpointer::before_update() {
  if (!unsnapshotted_) return;
  const double t0 = now_s();
  unsnapshotted_->complete_snapshot();
  unsnapshotted_.reset();
  last_stall_s_ += now_s() - t0;
  total_stall_s_ += now_s() - t0;
}

void Checkpointer::wait() {
  if (worker_.joinable()) worker_.join();
  unsnapshotted_.reset();
  if (!in_flight_) return;
  in_flight_ = false;
  if (!worker_error_) return;
  auto error = worker_error_;
  worker_error_ = nullptr;
  // What a user needs next: which checkpoint is still there to resume from.
  const std::string kept =
      last_committed_.empty()
          ? std::string("no checkpoint of this run is committed yet")
          : fmt::format("the newest good checkpoint is '{}' (step {})",
                        (fs::path(dirpath_) / last_committed_).string(), last_committed_step_);
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    if (trainer_.config().checkpoint.on_error == "continue") {
      log0(control_, fmt::format("warning: checkpoint save failed, training continues "
                                 "(checkpoint.on_error=continue): {}; {}",
                                 e.what(), kept));
      return;
    }
    // An agreed error (every rank has it) keeps its kind, now with what is kept.
    if (const auto* agreed = dynamic_cast<const AgreedError*>(&e)) {
      throw AgreedError(agreed->kind(), fmt::format("{}; {}", e.what(), kept));
    }
    throw;
  }
}

void Checkpointer::after_step(int64_t epoch, const std::map<std::string, double>& metrics) {
  const int64_t step = trainer_.state().global_step;
  // Every rank must agree on time-based triggers: rank 0's clock decides.
  double since = now_s() - last_save_time_s_;
  const double interval = policy_->options().train_time_interval_s;
  if (interval > 0) control_.broadcast(&since, 1, DType::kFloat64, 0);
  const bool time_due = interval > 0 && since >= interval;
  if (time_due) last_save_time_s_ = now_s();
  // Saved at this step already (Lightning's _last_global_step_saved), also by a save in flight.
  if (step == last_saved_step_ || !policy_->due_after_batch(step, time_due)) return;
  run_plan({step, epoch, metrics}, [&](const ckpt::SavePoint& p, const ckpt::ExistsFn& exists) {
    return policy_->plan_after_batch(p, time_due, exists);
  });
}

void Checkpointer::after_validation(int64_t epoch, const std::map<std::string, double>& metrics) {
  const ckpt::SavePoint point{trainer_.state().global_step, epoch, metrics};
  if (point.step == last_saved_step_ || !policy_->due_after_validation(point)) return;
  run_plan(point, [&](const ckpt::SavePoint& p, const ckpt::ExistsFn& exists) {
    return policy_->plan_after_validation(p, exists);
  });
}

void Checkpointer::after_epoch(int64_t epoch, const std::map<std::string, double>& metrics) {
  const ckpt::SavePoint point{trainer_.state().global_step, epoch, metrics};
  if (point.step == last_saved_step_ || !policy_->due_after_epoch(point)) return;
  run_plan(point, [&](const ckpt::SavePoint& p, const ckpt::ExistsFn& exists) {
    return policy_->plan_after_epoch(p, exists);
  });
}

void Checkpointer::on_train_end() { wait(); }

void Checkpointer::save_if_unsaved(const std::map<std::string, double>& metrics) {
  if (trainer_.state().global_step != last_saved_step_) save_now(metrics, true);
  wait();
}

std::string Checkpointer::save_now(const std::map<std::string, double>& metrics, bool wait_done) {
  const TrainerState& st = trainer_.state();
  // The epoch a name shows: the one in progress, or the one that just ended at its boundary.
  const int64_t epoch = st.batch_in_epoch == 0 && st.epoch > 0 ? st.epoch - 1 : st.epoch;
  const std::string file =
      run_plan({st.global_step, epoch, metrics},
               [&](const ckpt::SavePoint& p, const ckpt::ExistsFn& exists) {
                 return policy_->plan_forced(p, exists);
               });
  if (wait_done) wait();
  return file;
}

std::string Checkpointer::summary_json() const {
  const ckpt::PolicyState& s = policy_->state();
  auto path = [&](const std::string& name) {
    return name.empty() ? std::string() : (fs::path(dirpath_) / name).string();
  };
  auto score = [](const std::optional<double>& v) {
    return v && std::isfinite(*v) ? nlohmann::json(*v) : nlohmann::json();
  };
  nlohmann::json j;
  j["dirpath"] = dirpath_;
  j["best_model_path"] = path(s.best_model_path);
  j["best_model_score"] = score(s.best_model_score);
  j["kth_best_model_path"] = path(s.kth_best_model_path);
  j["kth_value"] = score(s.kth_value);
  j["last_model_path"] = path(s.last_model_path);
  nlohmann::json models = nlohmann::json::object();
  for (const auto& [f, v] : s.best_k_models) models[path(f)] = score(v);
  j["best_k_models"] = models;
  j["saves_completed"] = saves_completed_;
  j["save_stall_s_total"] = total_stall_s_;  // rank 0's training-thread time in saves
  if (!resume_info_.file.empty()) {
    j["resume"] = {{"file", resume_info_.file}, {"global_step", resume_info_.global_step},
                   {"read_s", resume_info_.read_s}, {"handover_s", resume_info_.handover_s},
                   {"load_s", resume_info_.load_s}};
  }
  return j.dump();
}

}  // namespace ddp
