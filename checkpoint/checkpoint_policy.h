// ModelCheckpoint: when to save, how to name the file, and which files to keep — PyTorch
// Lightning 2.x's ModelCheckpoint, decision for decision (docs/lightning-compat.md lists each
// rule, the few deliberate differences, and the test that pins it).
//
//  - Triggers (Lightning's rule: at most one of them): every_n_train_steps (checked after each
//    optimizer step), train_time_interval_s (same place), every_n_epochs (at the end of a
//    training epoch, or after a validation when validation runs several times an epoch; see
//    save_on_train_epoch_end). every_n_epochs = -1 (the default) means 1 when neither of the
//    other two is set, else 0.
//  - save_top_k: keep the k best by `monitor` (mode min|max), -1 keeps all, 0 saves none but
//    `last`. A candidate enters only if it is strictly better than the k-th best; NaN ranks
//    worst (as +/-inf). Without a monitor "best" is the newest (k must be -1, 0 or 1).
//  - save_last: at every trigger the state is also "last" (last.h5): a hard link to the file
//    just saved, or a file of its own when the top-k did not take the state.
//  - filename: template with {epoch}, {step}, {train_loss}, {val_loss} and format specs; with
//    auto_insert_metric_name "{epoch}" becomes "epoch=3". A name that exists already gets
//    "-v1", "-v2", ... (enable_version_counter). ".h5" is appended.
//  - keep_last_n (ddp-runtime's own, not Lightning's): files Lightning would delete are kept
//    while they are among the n newest saves, so a corrupt newest file leaves one to resume from.
//
// Plan, then commit: a hook returns a SavePlan (the file to write, the files to delete, and
// the policy state once the save is committed, which goes into the file). Nothing changes
// until commit(plan) is called after the save is durable, so a failed save leaves the policy
// and the directory as they were.
//
// Thread-safety: none. Deterministic from its inputs except for `exists`, which answers from
// the writing rank's directory: plan there, then hand the plan to the other ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ddp::ckpt {

struct CheckpointPolicyOptions {
  bool enabled = true;
  std::string dirpath;               // directory of the checkpoints
  int64_t every_n_train_steps = 0;   // 0: off
  int64_t every_n_epochs = -1;       // 0: off; -1: 1 unless another trigger is set
  double train_time_interval_s = 0;  // 0: off; wall-clock seconds between saves
  bool save_last = true;
  int64_t save_top_k = 1;
  std::string monitor;               // metric name, e.g. "val_loss"; empty: newest is best
  std::string mode = "min";          // "min" | "max"
  std::string filename = "{epoch}-{step}";
  bool auto_insert_metric_name = true;  // "{epoch}" -> "epoch={epoch}"
  bool enable_version_counter = true;   // "-v1" instead of overwriting an existing name
  std::string save_on_train_epoch_end = "auto";  // auto | true | false
  bool save_weights_only = false;
  int64_t keep_last_n = 2;
};

// What the training loop does; decides save_on_train_epoch_end = auto as Lightning does.
struct LoopFacts {
  bool validates = true;              // any validation at all (data and an epoch period)
  int64_t check_val_every_n_epoch = 1;
  double val_check_interval = 1.0;    // fraction of an epoch (<= 1) or optimizer steps (> 1)
};

// A point of training where a save may happen.
struct SavePoint {
  int64_t step = 0;   // global step: optimizer steps done
  int64_t epoch = 0;  // 0-based index of the epoch in progress (or just ended): {epoch}
  std::map<std::string, double> metrics;  // what has been logged so far (latest values)
};

// ModelCheckpoint.state_dict()'s content, plus what keep_last_n needs. Basenames.
struct PolicyState {
  std::vector<std::pair<std::string, double>> best_k_models;  // insertion order, as a dict
  std::string best_model_path;
  std::optional<double> best_model_score;
  std::string kth_best_model_path;
  std::optional<double> kth_value;
  std::optional<double> current_score;
  std::string last_model_path;
  int64_t last_global_step_saved = -1;
  std::vector<std::string> recent;    // newest last, at most keep_last_n
  std::vector<std::string> retiring;  // deleted by Lightning's rules; kept while in `recent`
  std::string unranked;               // a forced save without save_last: dropped next commit
};

struct SavePlan {
  std::string file;                // basename to write; empty: no save at this point
  std::string link_last;           // non-empty: point this name (last.h5) at `file` after it
  std::vector<std::string> drop;   // basenames to delete after the commit
  std::vector<std::string> warnings;  // for the user, once (e.g. the monitor was never logged)
  PolicyState after;               // the state once committed; embedded in the file
  bool empty() const { return file.empty(); }
};

// Whether a basename exists in the checkpoint directory.
using ExistsFn = std::function<bool(const std::string& basename)>;

class CheckpointPolicy {
 public:
  explicit CheckpointPolicy(CheckpointPolicyOptions options, LoopFacts facts = {});

  // Throws ddp::Error(kInvalidArgument) for contradictory options: save_top_k > 1 (or < -1)
  // without a monitor, an unknown mode, more than one trigger, a template naming a field
  // other than epoch, step, train_loss, val_loss.
  static void validate(const CheckpointPolicyOptions& options);

  int64_t every_n_epochs() const { return every_n_epochs_; }
  bool save_on_train_epoch_end() const { return save_on_train_epoch_end_; }

  // Whether the hook would consider saving here, from the options alone (no state, no file
  // system: callable while an async save commits on another thread). The planning hooks also
  // skip a step that was saved already, and return an empty plan.
  bool due_after_batch(int64_t step, bool time_due) const;
  bool due_after_validation(const SavePoint& p) const;
  bool due_after_epoch(const SavePoint& p) const;

  // Lightning's on_train_batch_end / on_validation_end / on_train_epoch_end.
  SavePlan plan_after_batch(const SavePoint& p, bool time_due, const ExistsFn& exists) const;
  SavePlan plan_after_validation(const SavePoint& p, const ExistsFn& exists) const;
  SavePlan plan_after_epoch(const SavePoint& p, const ExistsFn& exists) const;
  // A save outside the schedule (preemption): written as `last` when save_last is set, else
  // under the template's name, unranked, and deleted by the next commit.
  SavePlan plan_forced(const SavePoint& p, const ExistsFn& exists) const;

  // REQUIRES: `plan` came from this policy in its current state and its file is durable.
  void commit(const SavePlan& plan);

  // The template's name for this point (".h5" appended); version >= 1 appends "-v<version>".
  std::string filename(int64_t epoch, int64_t step, const std::map<std::string, double>& metrics,
                       int version = 0) const;

  const PolicyState& state() const { return state_; }
  // Best first (ties: the one that entered first); the last is the k-th best.
  std::vector<std::pair<std::string, double>> ranked() const;
  std::string state_json() const { return to_json(state_); }
  static std::string to_json(const PolicyState& state, const CheckpointPolicyOptions& options);
  std::string to_json(const PolicyState& state) const { return to_json(state, options_); }
  static PolicyState from_json(const std::string& text);  // tolerant of an empty string
  void load_state_json(const std::string& json) { state_ = from_json(json); }
  static std::string plan_json(const SavePlan& plan, const CheckpointPolicyOptions& options);
  static SavePlan plan_from_json(const std::string& text);
  const CheckpointPolicyOptions& options() const { return options_; }
  // The file this run resumed from (basename in the directory): never deleted by this run,
  // as Lightning keeps the ckpt_path it resumed from.
  void set_resumed_from(std::string basename) { resumed_from_ = std::move(basename); }

 private:
  bool skip(int64_t step) const;
  SavePlan plan_epoch_trigger(const SavePoint& p, bool due, const ExistsFn& exists) const;
  void save_topk(const SavePoint& p, const ExistsFn& exists, SavePlan& plan) const;
  void save_last(const SavePoint& p, const ExistsFn& exists, SavePlan& plan) const;
  std::string versioned(const SavePoint& p, const std::string& base_template,
                        const std::string& allowed, const ExistsFn& exists,
                        const SavePlan& plan) const;
  void finish_plan(const SavePoint& p, SavePlan& plan, std::vector<std::string> removed) const;

  CheckpointPolicyOptions options_;
  int64_t every_n_epochs_ = 0;
  bool save_on_train_epoch_end_ = true;
  PolicyState state_;
  std::string resumed_from_;
};

}  // namespace ddp::ckpt
