// The run configuration: typed, validated, with PyTorch Lightning's names where one exists.
//
// Sources, later wins: built-in defaults (kDefaultConfigYaml in config_validate.cpp; same keys
// in the same order as configs/default.yaml), the user's YAML file, then `--set a.b=value`.
// load_config() rejects unknown keys (with a "did you mean" suggestion), values of the wrong
// type and out-of-range values with ddp::Error(kInvalidArgument) naming the key; a missing
// file is ddp::Error(kNotFound).
//
// Thread-safety: plain values; load_config is reentrant.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_policy.h"

namespace ddp {

struct TrainerConfig {
  int64_t max_epochs = 10;        // stop after this many epochs (-1: unbounded, needs max_steps)
  int64_t max_steps = -1;         // stop after this many optimizer steps (-1: unbounded)
  int64_t batch_size = 64;        // samples per rank per micro-batch (global = batch * world)
  int64_t log_every_n_steps = 10;  // metrics row + log line period, optimizer steps
  // <= 1.0: validate after that fraction of each epoch; > 1: every that many optimizer steps.
  double val_check_interval = 1.0;
  int64_t check_val_every_n_epoch = 1;  // 0 disables validation
  int64_t limit_val_batches = -1;       // cap on validation batches per rank (-1: all)
  int64_t accumulate_grad_batches = 1;  // micro-batches per optimizer step
  double gradient_clip_val = 0.0;       // max global L2 grad norm; 0 disables clipping
  int64_t seed = 42;                    // seeds data order, init and per-rank RNG
  std::string default_root_dir = "runs";  // run directory parent
  std::string name = "default";           // run directory: <default_root_dir>/<name>
  std::string precision = "32";           // "32" | "bf16-mixed" | "16-mixed"
  std::string progress_bar = "auto";      // "auto" (if stderr is a terminal) | "on" | "off"
};

struct OptimizerConfig {
  std::string name = "adamw";  // "sgd" | "adam" | "adamw"
  double lr = 1e-3;
  double momentum = 0.9;  // sgd
  bool nesterov = false;  // sgd
  double weight_decay = 0.0;
  double beta1 = 0.9;  // adam, adamw
  double beta2 = 0.999;
  double eps = 1e-8;
};

struct SchedulerConfig {
  std::string name = "none";  // "none" | "step" | "cosine"
  int64_t step_size = 1000;   // step: decay period, optimizer steps
  double gamma = 0.1;         // step: decay factor
  int64_t warmup_steps = 0;   // cosine: linear warm-up length, optimizer steps
  double min_lr = 0.0;        // cosine: floor reached at max_steps
};

struct DdpConfig {
  std::string backend = "auto";  // "auto" (nccl if model on cuda) | "mpi" | "nccl"
  double bucket_cap_mb = 25.0;   // gradient bucket size, MiB; 0 = one bucket per parameter
  std::string compression = "none";  // all-reduce payload: "none" | "fp16" | "bf16"
  double timeout_s = 300.0;          // bound on every collective wait, seconds
  int64_t zero_stage = 0;  // 0: replicated optimizer state; 1: sharded across ranks (ZeRO-1)
};

struct DataConfig {
  // "synthetic_classification" | "synthetic_regression" | "csv" | "mnist" | "tokens"
  std::string name = "synthetic_classification";
  std::string path;      // csv file / mnist directory / token file
  std::string val_path;  // optional separate validation file (else val_fraction of path)
  double val_fraction = 0.1;
  int64_t num_samples = 16384;  // synthetic: training samples
  int64_t val_samples = 2048;   // synthetic: validation samples
  int64_t num_features = 64;    // synthetic: input width
  int64_t num_classes = 10;     // synthetic_classification: classes
  double noise = 0.1;           // synthetic: label noise std
  std::string label_column;     // csv: label column name (default: last column)
  std::string task = "classification";  // csv: "classification" | "regression"
  int64_t seq_len = 64;                 // tokens: context length
  bool shuffle = true;                  // DistributedSampler shuffle (seed + epoch)
  bool drop_last = true;                // drop the ragged tail (sampler and batches)
};

struct ModelConfig {
  std::string name = "mlp";                   // a registered model: mlp | cnn | transformer | ...
  std::string device = "cpu";                 // "cpu" | "cuda"
  std::vector<int64_t> hidden_sizes{256, 256};  // mlp
  std::vector<int64_t> channels{16, 32};        // cnn
  double dropout = 0.0;                          // all built-ins
  int64_t d_model = 128;                         // transformer
  int64_t n_layers = 2;                          // transformer
  int64_t n_heads = 4;                           // transformer
  int64_t d_ff = 512;                            // transformer feed-forward width
  std::map<std::string, std::string> options;    // free-form, for user-registered models
};

struct CheckpointConfig {
  bool enabled = true;
  std::string dirpath;               // default: <run dir>/checkpoints
  int64_t every_n_train_steps = 0;   // save every n optimizer steps; 0 = off
  int64_t every_n_epochs = -1;       // save at the end of every n-th epoch; 0 = off;
                                     // -1: 1 unless another trigger is set (Lightning's None)
  double train_time_interval = 0.0;  // save every this many wall-clock seconds; 0 = off
  bool save_last = true;             // at every trigger the state is also last.h5
  int64_t save_top_k = 1;            // keep the k best by monitor (-1 all, 0 none but last)
  std::string monitor;               // metric ranking checkpoints: val_loss | train_loss
  std::string mode = "min";          // min | max
  std::string filename = "{epoch}-{step}";  // template; ".h5" appended
  bool auto_insert_metric_name = true;  // "{epoch}" names as "epoch=3"
  bool enable_version_counter = true;   // an existing name gets "-v1", "-v2", ...
  std::string save_on_train_epoch_end = "auto";  // auto | true | false: epoch end or after validation
  bool save_weights_only = false;    // model only: no optimizer, position or RNG
  int64_t keep_last_n = 2;           // also keep the n newest (fallback if one is corrupt)
  bool async = false;                // gather + write on a background thread
  // Niceness of the async save's threads (Linux, per thread): the save then runs on CPU the
  // training loop leaves idle instead of slowing its steps (docs/performance-checkpoint.md).
  int64_t async_nice = 10;
  double chunk_mb = 16.0;            // save gather, MiB: rank 0 receive ring of 2 chunks (rounds <= 1/2)
  std::string on_error = "stop";     // a failed save: stop (all ranks exit) | continue
  std::string resume = "none";       // auto | last | best | none | <path to .h5>
};

struct PreemptionConfig {
  std::string signals = "SIGTERM,SIGINT,SIGUSR1";  // caught on any rank -> coordinated stop
  int64_t exit_code = 75;  // exit status after a preemption stop (distinct from 0-4)
  bool save = true;        // save a checkpoint at the stop (if checkpoint.enabled)
};

struct Config {
  TrainerConfig trainer;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  DdpConfig ddp;
  DataConfig data;
  ModelConfig model;
  CheckpointConfig checkpoint;
  PreemptionConfig preemption;
  std::string resolved_yaml;  // the full effective config, as YAML (for logs and checkpoints)
};

// The built-in defaults as YAML text; every accepted key appears here.
extern const char* const kDefaultConfigYaml;

// `path` may be empty (defaults only). `overrides` are "dotted.key=value" strings; the value
// is parsed as YAML ("[1,2]" is a list, "1e-3" a number).
// The checkpoint section as the policy's options (checkpoint/checkpoint_policy.h).
ckpt::CheckpointPolicyOptions to_policy_options(const CheckpointConfig& c,
                                                const std::string& dirpath);

Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// Same, from YAML text instead of a file (tests, fuzzing).
Config load_config_from_string(const std::string& yaml_text,
                               const std::vector<std::string>& overrides);

}  // namespace ddp
