// The config schema, in one place: the default values (kDefaultConfigYaml), the table of keys
// (schema()) and the range rules run after all sources are merged. Rules are checked on the
// merged config, not per source, so a file may set scheduler.name: cosine and a later override
// provide trainer.max_steps.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "collectives/error.h"
#include "runtime/config_internal.h"
#include "runtime/stop_signal.h"

namespace ddp {

// Same keys in the same order as config_internal::schema() below; configs/default.yaml
// documents each key. The values must equal the member initialisers of config.h (a test checks).
const char* const kDefaultConfigYaml = R"yaml(trainer:
  max_epochs: 10                # stop after this many epochs (-1: unbounded, needs max_steps)
  max_steps: -1                 # stop after this many optimizer steps (-1: unbounded)
  batch_size: 64                # samples per rank per micro-batch (global = batch_size * world)
  log_every_n_steps: 10         # metrics row + log line period, optimizer steps
  val_check_interval: 1.0       # <= 1: fraction of an epoch; > 1: every that many optimizer steps
  check_val_every_n_epoch: 1    # validate every n epochs; 0 disables validation
  limit_val_batches: -1         # cap on validation batches per rank (-1: all)
  accumulate_grad_batches: 1    # micro-batches per optimizer step
  gradient_clip_val: 0.0        # max global L2 gradient norm; 0 disables clipping
  seed: 42                      # seeds data order, initialisation and per-rank RNG
  default_root_dir: runs        # parent of run directories
  name: default                 # run directory: <default_root_dir>/<name>
  precision: "32"               # "32" | bf16-mixed (autocast; CPU or GPU) | 16-mixed (GPU; loss scaling)
  progress_bar: auto            # auto (if stderr is a terminal) | on | off
optimizer:
  name: adamw                   # sgd | adam | adamw
  lr: 0.001                     # learning rate (peak rate when a scheduler warms up)
  momentum: 0.9                 # sgd only
  nesterov: false               # sgd only
  weight_decay: 0.0             # L2 (sgd, adam) or decoupled (adamw) weight decay
  beta1: 0.9                    # adam, adamw
  beta2: 0.999                  # adam, adamw
  eps: 1.0e-08                  # adam, adamw denominator term
scheduler:
  name: none                    # none | step | cosine (cosine needs trainer.max_steps)
  step_size: 1000               # step: decay period, optimizer steps
  gamma: 0.1                    # step: decay factor, in (0, 1]
  warmup_steps: 0               # cosine: linear warm-up length, optimizer steps
  min_lr: 0.0                   # cosine: learning rate reached at max_steps
ddp:
  backend: auto                 # auto (nccl if model on cuda, else mpi) | mpi | nccl
  bucket_cap_mb: 25.0           # gradient bucket size, MiB; 0 = one bucket per parameter
  compression: none             # all-reduce payload: none | fp16 | bf16
  timeout_s: 300.0              # bound on every collective wait, seconds
  zero_stage: 0                 # 0: optimizer state on every rank | 1: sharded (ZeRO-1)
data:
  # synthetic_classification | synthetic_regression | csv | mnist | tokens
  name: synthetic_classification
  path: ""                      # csv file / mnist directory / token file
  val_path: ""                  # optional separate validation file (else val_fraction of path)
  val_fraction: 0.1             # file datasets: share of samples held out for validation
  num_samples: 16384            # synthetic: training samples
  val_samples: 2048             # synthetic: validation samples
  num_features: 64              # synthetic: input width
  num_classes: 10               # synthetic_classification: classes
  noise: 0.1                    # synthetic: label noise standard deviation
  label_column: ""              # csv: label column name (empty: last column)
  task: classification          # csv: classification | regression
  seq_len: 64                   # tokens: context length
  shuffle: true                 # DistributedSampler shuffle (seed + epoch)
  drop_last: true               # drop the ragged tail (sampler and batches)
model:
  name: mlp                     # a registered model: mlp | cnn | transformer | user-registered
  device: cpu                   # cpu | cuda
  hidden_sizes: [256, 256]      # mlp: hidden layer widths
  channels: [16, 32]            # cnn: conv channels per block
  dropout: 0.0                  # all built-ins
  d_model: 128                  # transformer: embedding width (divisible by n_heads)
  n_layers: 2                   # transformer: blocks
  n_heads: 4                    # transformer: attention heads
  d_ff: 512                     # transformer: feed-forward width
  options: {}                   # free-form string map for user-registered models
checkpoint:
  enabled: true                 # write checkpoints (HDF5, rank 0 only, atomic)
  dirpath: ""                   # directory; empty: <default_root_dir>/<name>/checkpoints
  every_n_train_steps: 0        # save every n optimizer steps; 0 = off
  every_n_epochs: -1            # save at the end of every n-th epoch; 0 = off; -1: 1 unless another trigger is set
  train_time_interval: 0.0      # save every this many wall-clock seconds; 0 = off
  save_last: true               # at every trigger the state is also last.h5 (a link to the file saved, else its own file)
  save_top_k: 1                 # keep the k best by monitor (-1: all, 0: none but last); without monitor: the newest
  monitor: ""                   # metric ranking checkpoints (val_loss, train_loss); empty: newest
  mode: min                     # min | max: whether a smaller or larger monitor value is better
  filename: "{epoch}-{step}"    # template of {epoch} {step} {train_loss} {val_loss}, {val_loss:.3f} allowed; ".h5" appended
  auto_insert_metric_name: true # "{epoch}" names as "epoch=3" (Lightning's default)
  enable_version_counter: true  # a name that exists already gets "-v1", "-v2", ... instead of being overwritten
  save_on_train_epoch_end: auto # auto | true | false: save at the epoch's end, or after each validation (auto: Lightning's rule)
  save_weights_only: false      # model only (no optimizer, data position or RNG state)
  keep_last_n: 2                # ddp-runtime's own: files Lightning would delete are kept while among the n newest saves (-1: all)
  async: false                  # gather and write on a background thread while training goes on
  async_nice: 10                # niceness of an async save's threads (Linux): they get the CPU training leaves idle; 0 = same as training
  chunk_mb: 16.0                # MiB; rank 0 gathers a save into a ring of 2 chunks
  on_error: stop                # a failed save: stop (every rank exits) | continue (warn)
  resume: none                  # auto | last | best | none | <path to a .h5 checkpoint>
preemption:
  signals: "SIGTERM,SIGINT,SIGUSR1"  # caught on any rank: every rank stops at the same step
  exit_code: 75                 # exit status after a preemption stop (ddp-launch restarts on it)
  save: true                    # save a checkpoint at the stop (when checkpoint.enabled)
)yaml";

}  // namespace ddp

namespace ddp::config_internal {

// One table row per key; the macro keeps the key's spelling identical to the member's name.
// clang-format off
#define DDP_CONFIG_FIELD(section, name) \
  Field { #section, #name, [](Config& c) -> FieldRef { return &c.section.name; } }
// clang-format on

const std::vector<Field>& schema() {
  static const std::vector<Field> fields{
      DDP_CONFIG_FIELD(trainer, max_epochs),
      DDP_CONFIG_FIELD(trainer, max_steps),
      DDP_CONFIG_FIELD(trainer, batch_size),
      DDP_CONFIG_FIELD(trainer, log_every_n_steps),
      DDP_CONFIG_FIELD(trainer, val_check_interval),
      DDP_CONFIG_FIELD(trainer, check_val_every_n_epoch),
      DDP_CONFIG_FIELD(trainer, limit_val_batches),
      DDP_CONFIG_FIELD(trainer, accumulate_grad_batches),
      DDP_CONFIG_FIELD(trainer, gradient_clip_val),
      DDP_CONFIG_FIELD(trainer, seed),
      DDP_CONFIG_FIELD(trainer, default_root_dir),
      DDP_CONFIG_FIELD(trainer, name),
      DDP_CONFIG_FIELD(trainer, precision),
      DDP_CONFIG_FIELD(trainer, progress_bar),
      DDP_CONFIG_FIELD(optimizer, name),
      DDP_CONFIG_FIELD(optimizer, lr),
      DDP_CONFIG_FIELD(optimizer, momentum),
      DDP_CONFIG_FIELD(optimizer, nesterov),
      DDP_CONFIG_FIELD(optimizer, weight_decay),
      DDP_CONFIG_FIELD(optimizer, beta1),
      DDP_CONFIG_FIELD(optimizer, beta2),
      DDP_CONFIG_FIELD(optimizer, eps),
      DDP_CONFIG_FIELD(scheduler, name),
      DDP_CONFIG_FIELD(scheduler, step_size),
      DDP_CONFIG_FIELD(scheduler, gamma),
      DDP_CONFIG_FIELD(scheduler, warmup_steps),
      DDP_CONFIG_FIELD(scheduler, min_lr),
      DDP_CONFIG_FIELD(ddp, backend),
      DDP_CONFIG_FIELD(ddp, bucket_cap_mb),
      DDP_CONFIG_FIELD(ddp, compression),
      DDP_CONFIG_FIELD(ddp, timeout_s),
      DDP_CONFIG_FIELD(ddp, zero_stage),
      DDP_CONFIG_FIELD(data, name),
      DDP_CONFIG_FIELD(data, path),
      DDP_CONFIG_FIELD(data, val_path),
      DDP_CONFIG_FIELD(data, val_fraction),
      DDP_CONFIG_FIELD(data, num_samples),
      DDP_CONFIG_FIELD(data, val_samples),
      DDP_CONFIG_FIELD(data, num_features),
      DDP_CONFIG_FIELD(data, num_classes),
      DDP_CONFIG_FIELD(data, noise),
      DDP_CONFIG_FIELD(data, label_column),
      DDP_CONFIG_FIELD(data, task),
      DDP_CONFIG_FIELD(data, seq_len),
      DDP_CONFIG_FIELD(data, shuffle),
      DDP_CONFIG_FIELD(data, drop_last),
      DDP_CONFIG_FIELD(model, name),
      DDP_CONFIG_FIELD(model, device),
      DDP_CONFIG_FIELD(model, hidden_sizes),
      DDP_CONFIG_FIELD(model, channels),
      DDP_CONFIG_FIELD(model, dropout),
      DDP_CONFIG_FIELD(model, d_model),
      DDP_CONFIG_FIELD(model, n_layers),
      DDP_CONFIG_FIELD(model, n_heads),
      DDP_CONFIG_FIELD(model, d_ff),
      DDP_CONFIG_FIELD(model, options),
      DDP_CONFIG_FIELD(checkpoint, enabled),
      DDP_CONFIG_FIELD(checkpoint, dirpath),
      DDP_CONFIG_FIELD(checkpoint, every_n_train_steps),
      DDP_CONFIG_FIELD(checkpoint, every_n_epochs),
      DDP_CONFIG_FIELD(checkpoint, train_time_interval),
      DDP_CONFIG_FIELD(checkpoint, save_last),
      DDP_CONFIG_FIELD(checkpoint, save_top_k),
      DDP_CONFIG_FIELD(checkpoint, monitor),
      DDP_CONFIG_FIELD(checkpoint, mode),
      DDP_CONFIG_FIELD(checkpoint, filename),
      DDP_CONFIG_FIELD(checkpoint, auto_insert_metric_name),
      DDP_CONFIG_FIELD(checkpoint, enable_version_counter),
      DDP_CONFIG_FIELD(checkpoint, save_on_train_epoch_end),
      DDP_CONFIG_FIELD(checkpoint, save_weights_only),
      DDP_CONFIG_FIELD(checkpoint, keep_last_n),
      DDP_CONFIG_FIELD(checkpoint, async),
      DDP_CONFIG_FIELD(checkpoint, async_nice),
      DDP_CONFIG_FIELD(checkpoint, chunk_mb),
      DDP_CONFIG_FIELD(checkpoint, on_error),
      DDP_CONFIG_FIELD(checkpoint, resume),
      DDP_CONFIG_FIELD(preemption, signals),
      DDP_CONFIG_FIELD(preemption, exit_code),
      DDP_CONFIG_FIELD(preemption, save),
  };
  return fields;
}

#undef DDP_CONFIG_FIELD

namespace {

// Every message reads "config key 'K': must be RULE, got VALUE".
[[noreturn]] void fail(std::string_view key, std::string_view rule, const std::string& got) {
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("config key '{}': must be {}, got {}", key, rule, got));
}

std::string quoted(const std::string& s) { return fmt::format("'{}'", s); }

void at_least(std::string_view key, int64_t v, int64_t min) {
  if (v < min) fail(key, fmt::format(">= {}", min), std::to_string(v));
}

// -1 means "unbounded" / "all" for a few counters.
void at_least_or_unbounded(std::string_view key, int64_t v, int64_t min) {
  if (v < min && v != -1) fail(key, fmt::format(">= {} or -1", min), std::to_string(v));
}

void positive(std::string_view key, double v) {
  if (!(v > 0)) fail(key, "> 0", fmt::format("{}", v));
}

void non_negative(std::string_view key, double v) {
  if (!(v >= 0)) fail(key, ">= 0", fmt::format("{}", v));
}

// [0, 1): probabilities, fractions and Adam's betas.
void unit_interval(std::string_view key, double v) {
  if (!(v >= 0 && v < 1)) fail(key, "in [0, 1)", fmt::format("{}", v));
}

void one_of(std::string_view key, const std::string& v,
            std::initializer_list<const char*> choices) {
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    fail(key, fmt::format("one of {}", fmt::join(choices, ", ")), quoted(v));
  }
}

void positive_list(std::string_view key, const std::vector<int64_t>& v) {
  const bool ok = !v.empty() && std::all_of(v.begin(), v.end(), [](int64_t x) { return x >= 1; });
  if (!ok) fail(key, "a non-empty list of integers >= 1", fmt::format("[{}]", fmt::join(v, ", ")));
}

void validate_trainer(const TrainerConfig& t) {
  at_least_or_unbounded("trainer.max_epochs", t.max_epochs, 1);
  at_least_or_unbounded("trainer.max_steps", t.max_steps, 1);
  if (t.max_epochs == -1 && t.max_steps == -1) {
    throw Error(ErrorKind::kInvalidArgument,
                "config keys 'trainer.max_epochs' and 'trainer.max_steps' are both -1 "
                "(unbounded): set at least one of them to a positive limit");
  }
  at_least("trainer.batch_size", t.batch_size, 1);
  at_least("trainer.log_every_n_steps", t.log_every_n_steps, 1);
  const double vci = t.val_check_interval;
  if (!(vci > 0) || (vci > 1 && vci != std::floor(vci))) {
    fail("trainer.val_check_interval",
         "a fraction of an epoch in (0, 1] or a whole number of optimizer steps > 1",
         fmt::format("{}", vci));
  }
  at_least("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch, 0);
  at_least_or_unbounded("trainer.limit_val_batches", t.limit_val_batches, 1);
  at_least("trainer.accumulate_grad_batches", t.accumulate_grad_batches, 1);
  non_negative("trainer.gradient_clip_val", t.gradient_clip_val);
  one_of("trainer.precision", t.precision, {"32", "bf16-mixed", "16-mixed"});
  one_of("trainer.progress_bar", t.progress_bar, {"auto", "on", "off"});
}

void validate_optimizer(const OptimizerConfig& o) {
  one_of("optimizer.name", o.name, {"sgd", "adam", "adamw"});
  positive("optimizer.lr", o.lr);
  unit_interval("optimizer.momentum", o.momentum);
  non_negative("optimizer.weight_decay", o.weight_decay);
  unit_interval("optimizer.beta1", o.beta1);
  unit_interval("optimizer.beta2", o.beta2);
  positive("optimizer.eps", o.eps);
}

void validate_scheduler(const SchedulerConfig& s, const TrainerConfig& t) {
  one_of("scheduler.name", s.name, {"none", "step", "cosine"});
  at_least("scheduler.step_size", s.step_size, 1);
  if (!(s.gamma > 0 && s.gamma <= 1))
    fail("scheduler.gamma", "in (0, 1]", fmt::format("{}", s.gamma));
  at_least("scheduler.warmup_steps", s.warmup_steps, 0);
  non_negative("scheduler.min_lr", s.min_lr);
  if (s.name == "cosine" && t.max_steps < 1) {
    throw Error(
        ErrorKind::kInvalidArgument,
        fmt::format("config key 'scheduler.name': 'cosine' requires trainer.max_steps >= 1 "
                    "(the schedule reaches min_lr at max_steps), got trainer.max_steps = {}",
                    t.max_steps));
  }
}

void validate_ddp(const DdpConfig& d, const ModelConfig& m) {
  one_of("ddp.backend", d.backend, {"auto", "mpi", "nccl"});
  non_negative("ddp.bucket_cap_mb", d.bucket_cap_mb);
  one_of("ddp.compression", d.compression, {"none", "fp16", "bf16"});
  positive("ddp.timeout_s", d.timeout_s);
  if (d.zero_stage != 0 && d.zero_stage != 1) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config key 'ddp.zero_stage': must be 0 (replicated optimizer "
                            "state) or 1 (sharded across ranks), got {}",
                            d.zero_stage));
  }
  if (d.backend == "nccl" && m.device != "cuda") {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config key 'ddp.backend': 'nccl' requires model.device = cuda, got "
                            "model.device = {} (use backend mpi or auto on CPU)",
                            m.device));
  }
}

void validate_data(const DataConfig& d) {
  one_of("data.name", d.name,
         {"synthetic_classification", "synthetic_regression", "csv", "mnist", "tokens"});
  const bool file_backed = d.name == "csv" || d.name == "mnist" || d.name == "tokens";
  if (file_backed && d.path.empty()) {
    throw Error(
        ErrorKind::kInvalidArgument,
        fmt::format("config key 'data.path': data.path is required for data.name={}", d.name));
  }
  unit_interval("data.val_fraction", d.val_fraction);
  at_least("data.num_samples", d.num_samples, 1);
  at_least("data.val_samples", d.val_samples, 0);
  at_least("data.num_features", d.num_features, 1);
  at_least("data.num_classes", d.num_classes, 2);
  non_negative("data.noise", d.noise);
  one_of("data.task", d.task, {"classification", "regression"});
  at_least("data.seq_len", d.seq_len, 1);
}

void validate_model(const ModelConfig& m) {
  if (m.name.empty()) fail("model.name", "a non-empty model name", "''");
  one_of("model.device", m.device, {"cpu", "cuda"});
  positive_list("model.hidden_sizes", m.hidden_sizes);
  positive_list("model.channels", m.channels);
  unit_interval("model.dropout", m.dropout);
  at_least("model.d_model", m.d_model, 1);
  at_least("model.n_layers", m.n_layers, 1);
  at_least("model.n_heads", m.n_heads, 1);
  at_least("model.d_ff", m.d_ff, 1);
  if (m.d_model % m.n_heads != 0) {
    fail("model.d_model", fmt::format("divisible by model.n_heads ({})", m.n_heads),
         std::to_string(m.d_model));
  }
}

}  // namespace
}  // namespace ddp::config_internal

namespace ddp {

ckpt::CheckpointPolicyOptions to_policy_options(const CheckpointConfig& c,
                                                const std::string& dirpath) {
  ckpt::CheckpointPolicyOptions o;
  o.enabled = c.enabled;
  o.dirpath = dirpath;
  o.every_n_train_steps = c.every_n_train_steps;
  o.every_n_epochs = c.every_n_epochs;
  o.train_time_interval_s = c.train_time_interval;
  o.save_last = c.save_last;
  o.save_top_k = c.save_top_k;
  o.monitor = c.monitor;
  o.mode = c.mode;
  o.filename = c.filename;
  o.auto_insert_metric_name = c.auto_insert_metric_name;
  o.enable_version_counter = c.enable_version_counter;
  o.save_on_train_epoch_end = c.save_on_train_epoch_end;
  o.save_weights_only = c.save_weights_only;
  o.keep_last_n = c.keep_last_n;
  return o;
}

}  // namespace ddp

namespace ddp::config_internal {
namespace {

void validate_checkpoint(const CheckpointConfig& c) {
  at_least("checkpoint.every_n_train_steps", c.every_n_train_steps, 0);
  at_least_or_unbounded("checkpoint.every_n_epochs", c.every_n_epochs, 0);
  non_negative("checkpoint.train_time_interval", c.train_time_interval);
  at_least_or_unbounded("checkpoint.save_top_k", c.save_top_k, 0);
  at_least_or_unbounded("checkpoint.keep_last_n", c.keep_last_n, 0);
  one_of("checkpoint.mode", c.mode, {"min", "max"});
  one_of("checkpoint.on_error", c.on_error, {"stop", "continue"});
  if (!c.monitor.empty()) one_of("checkpoint.monitor", c.monitor, {"val_loss", "train_loss"});
  if (c.save_top_k > 1 && c.monitor.empty()) {
    fail("checkpoint.monitor", fmt::format("set when checkpoint.save_top_k={} (which metric "
                                           "ranks the checkpoints?), e.g. val_loss",
                                           c.save_top_k),
         "''");
  }
  positive("checkpoint.chunk_mb", c.chunk_mb);
  if (c.async_nice < 0 || c.async_nice > 19) {
    fail("checkpoint.async_nice", "in [0, 19] (a niceness added to the save's threads)",
         std::to_string(c.async_nice));
  }
  if (c.filename.empty() || c.filename.find('/') != std::string::npos) {
    fail("checkpoint.filename", "a non-empty name without '/'", quoted(c.filename));
  }
  // ModelCheckpoint's own rules: one trigger, template fields, save_on_train_epoch_end.
  ckpt::CheckpointPolicy::validate(to_policy_options(c, c.dirpath));
  if (c.resume.empty()) fail("checkpoint.resume", "auto, last, best, none or a path", "''");
}

void validate_preemption(const PreemptionConfig& p) {
  if (p.exit_code < 5 || p.exit_code > 125) {
    fail("preemption.exit_code", "in [5, 125] (0-4 are success and error codes)",
         std::to_string(p.exit_code));
  }
  parse_signal_list(p.signals);  // throws naming an unknown signal
}

}  // namespace

void validate(const Config& config) {
  validate_preemption(config.preemption);
  validate_checkpoint(config.checkpoint);
  validate_trainer(config.trainer);
  validate_optimizer(config.optimizer);
  validate_scheduler(config.scheduler, config.trainer);
  validate_ddp(config.ddp, config.model);
  validate_data(config.data);
  validate_model(config.model);
}

}  // namespace ddp::config_internal
