// ModelCheckpoint: when to save, how to name the file, and which files to keep — PyTorch
// Lightning's ModelCheckpoint semantics and names.
//
//  - every_n_train_steps / every_n_epochs / train_time_interval_s: save triggers (any may be 0 =
//    off). A save is also made at the end of training when save_last is set.
//  - save_top_k: keep the k best by `monitor` (mode min|max); -1 keeps all; 0 keeps none but
//    `last`. Without a monitor, "best" means newest (Lightning's behaviour).
//  - keep_last_n: additionally keep the n newest checkpoints, so that a corrupt newest file
//    still leaves a previous one to resume from.
//  - save_last: maintain last.h5 (a hard link to the newest committed checkpoint).
//  - filename: template with {epoch}, {step} and metric names with optional format specs,
//    e.g. "epoch={epoch}-step={step}-val_loss={val_loss:.3f}" (".h5" is appended).
//
// The policy is deterministic from its inputs, so every rank can evaluate it and reach the
// same decision without communication. Its best-k table is part of the checkpoint
// (state_json) so that a resumed run keeps the same top-k set.
//
// Thread-safety: none.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ddp::ckpt {

struct CheckpointPolicyOptions {
  bool enabled = true;
  std::string dirpath;               // directory of the checkpoints
  int64_t every_n_train_steps = 0;   // 0: off
  int64_t every_n_epochs = 1;        // 0: off; at the end of every n-th epoch
  double train_time_interval_s = 0;  // 0: off; wall-clock seconds between saves
  bool save_last = true;
  int64_t save_top_k = 1;
  std::string monitor;               // metric name, e.g. "val_loss"; empty: newest is best
  std::string mode = "min";          // "min" | "max"
  std::string filename = "epoch={epoch}-step={step}";
  bool save_weights_only = false;
  int64_t keep_last_n = 2;
};

struct BestEntry {
  std::string file;  // basename
  double score = 0;
  int64_t step = 0;
};

class CheckpointPolicy {
 public:
  explicit CheckpointPolicy(CheckpointPolicyOptions options);

  // Throws ddp::Error(kInvalidArgument) for contradictory options (e.g. save_top_k > 1
  // with a monitor missing, unknown mode, a filename template naming an unknown field).
  static void validate(const CheckpointPolicyOptions& options);

  bool due_after_step(int64_t global_step, double seconds_since_last_save) const;
  bool due_after_epoch(int64_t epochs_completed) const;

  // Basename (with .h5) for a checkpoint at this point, from the template.
  std::string filename(int64_t epoch, int64_t step,
                       const std::map<std::string, double>& metrics) const;

  // Records a committed checkpoint; returns the basenames that are no longer to be kept.
  // REQUIRES: `file` is the newest committed checkpoint.
  std::vector<std::string> on_committed(const std::string& file, int64_t step,
                                        const std::map<std::string, double>& metrics);

  std::optional<BestEntry> best() const;
  std::string state_json() const;
  void load_state_json(const std::string& json);  // tolerant of an empty string
  const CheckpointPolicyOptions& options() const { return options_; }

 private:
  CheckpointPolicyOptions options_;
  std::vector<BestEntry> best_k_;        // sorted best first
  std::vector<BestEntry> recent_;        // newest last, at most keep_last_n
  std::vector<std::string> all_saved_;   // every file saved and not yet dropped
};

}  // namespace ddp::ckpt
