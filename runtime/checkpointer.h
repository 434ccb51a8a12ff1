// Checkpointer: the Trainer's side of checkpointing — when to save (ckpt::CheckpointPolicy),
// what to save (state_io.h), how (sharded save over the Communicator, optionally async), and
// resume (barrier-protected: rank 0 chooses, verifies and reads the file, broadcasts it to the
// others — checkpoint_broadcast.h — everyone loads, all agree).
//
// Collective: every public method that saves or loads must be called by all ranks at the
// same point of training.
// Thread-safety: called from the training thread; an async save runs on one background
// thread over its own duplicated communicator, at most one at a time.
// An async save on CPU copies the parameters and optimizer state during the next
// forward/backward: whoever changes them (the Trainer, before optimizer.step()) must call
// before_update() first; wait(), resume() and the end of training do it too.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/checkpoint_policy.h"
#include "checkpoint/sharded_save.h"
#include "collectives/communicator.h"
#include "runtime/config.h"

namespace ddp {

class Trainer;
namespace ckpt {
class FileSystem;
}

struct ResumeInfo {
  std::string file;      // empty: fresh start
  int64_t global_step = 0;
  int64_t saved_world_size = 0;
  bool resharded = false;  // world size differs from the checkpoint's
  // Seconds (rank 0's clock): choosing and reading the file, handing it to the other ranks,
  // loading it into the trainer.
  double read_s = 0, handover_s = 0, load_s = 0;
};

class Checkpointer {
 public:
  // `save_comm` must be a communicator used by nothing else while a save is in flight (an
  // async save drives it from a background thread).
  Checkpointer(Trainer& trainer, Communicator& control, std::unique_ptr<Communicator> save_comm,
               std::shared_ptr<ckpt::FileSystem> fs);
  ~Checkpointer();

  // Chooses a checkpoint per checkpoint.resume (auto | last | best | none | <path>) and
  // restores the trainer from it. Throws ddp::AgreedError on failure (same on all ranks).
  ResumeInfo resume(const std::string& mode);

  // Hooks from the training loop (collective), Lightning's ModelCheckpoint hooks: after an
  // optimizer step, before its validation (on_train_batch_end); after a validation
  // (on_validation_end); at the end of a training epoch, also one that max_steps cut short
  // (on_train_epoch_end). `epoch` is the 0-based index of the epoch in progress or ending;
  // `metrics` what has been logged so far.
  void after_step(int64_t epoch, const std::map<std::string, double>& metrics);
  void after_validation(int64_t epoch, const std::map<std::string, double>& metrics);
  void after_epoch(int64_t epoch, const std::map<std::string, double>& metrics);
  // Waits for a save in flight. No save of its own: the epoch-end hook made Lightning's.
  void on_train_end();
  // Saves now regardless of the period (preemption, tests): as `last` when save_last is set,
  // else under the template's name until the next save. Returns the file name.
  std::string save_now(const std::map<std::string, double>& metrics, bool wait);
  // Saves (and waits) unless the current step was already saved.
  void save_if_unsaved(const std::map<std::string, double>& metrics);
  // ModelCheckpoint's state as JSON with paths in the directory (for --summary): dirpath,
  // best_model_path, best_model_score, kth_best_model_path, kth_value, last_model_path,
  // best_k_models {path: score}. Call after on_train_end().
  std::string summary_json() const;
  // Waits for an async save in flight (no-op otherwise); rethrows its error per on_error.
  void wait();
  // REQUIRES: called before parameters or optimizer state change (optimizer.step(), a load).
  // Returns once an async save in flight has its copy of them (helping with the copy rather
  // than waiting idle); at once when there is nothing left to copy. Its time counts in
  // last_stall_s().
  void before_update();

  const std::string& dirpath() const { return dirpath_; }
  const ResumeInfo& resume_info() const { return resume_info_; }
  int64_t saves_completed() const { return saves_completed_; }
  // Training-thread seconds spent in the last save: the whole save when synchronous; for an
  // async one, the snapshot plus the wait in before_update() (after that has been called).
  double last_stall_s() const { return last_stall_s_; }

 private:
  // Rank 0 only: the file checkpoint.resume names, read into *out (verified on the way); for
  // auto/last/best, older candidates in turn when one is damaged. "" when there is none.
  std::string choose_and_read(const std::string& mode, ckpt::Checkpoint* out);
  // Plans on rank 0 (its directory decides "-vN" names), hands the plan to every rank, and
  // starts the save if there is one. Collective.
  // Returns the plan's file ("" when nothing is saved here).
  using PlanFn = std::function<ckpt::SavePlan(const ckpt::SavePoint&, const ckpt::ExistsFn&)>;
  std::string run_plan(const ckpt::SavePoint& point, const PlanFn& make_plan);
  // REQUIRES: nothing in flight (run_plan waited).
  void start_save(const ckpt::SavePlan& plan, const std::map<std::string, double>& metrics);
  void after_commit(const ckpt::SavePlan& plan);  // rank 0: deletions, the `last` link

  Trainer& trainer_;
  Communicator& control_;
  std::unique_ptr<Communicator> save_comm_;
  std::shared_ptr<ckpt::FileSystem> fs_;
  std::unique_ptr<ckpt::CheckpointPolicy> policy_;
  ResumeInfo resume_info_;
  std::string dirpath_;
  int64_t last_saved_step_ = -1;
  double last_save_time_s_ = 0;
  bool warned_monitor_ = false;
  std::string last_committed_;  // basename of the newest committed save of this run
  int64_t last_committed_step_ = 0;
  int64_t saves_completed_ = 0;
  double last_stall_s_ = 0;
  double total_stall_s_ = 0;  // every save's last_stall_s(), summed

  std::shared_ptr<ckpt::SnapshotBuffer> snapshot_buffer_;  // reused by every save
  std::shared_ptr<ckpt::PendingSave> unsnapshotted_;  // async save with copies still to run
  std::thread worker_;
  std::exception_ptr worker_error_;
  bool in_flight_ = false;
};

}  // namespace ddp
