// The in-memory form of a checkpoint, free of LibTorch and HDF5: what the runtime snapshots
// and what the file format writes and reads. runtime/ converts tensors to and from it.
//
// Tensor paths use '/' between groups, e.g. "model/layers.0.weight" or
// "optimizer/layers.0.weight/exp_avg"; the HDF5 file has the same hierarchy
// (docs/checkpoint-format.md).
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "collectives/dtype.h"

namespace ddp::ckpt {

constexpr int64_t kFormatVersion = 1;

struct TensorEntry {
  std::string path;             // "model/<state_dict key>", "optimizer/<param>/<field>", ...
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;   // empty = scalar
  std::vector<uint8_t> data;    // row-major bytes, numel * dtype_size
  uint64_t checksum = 0;        // xxh3_64 of data (0 until computed)
};

// State that differs per rank. Stored under /ranks/<rank>/.
struct RankState {
  int64_t rank = 0;
  std::vector<uint8_t> cpu_rng;   // torch CPU generator state
  std::vector<uint8_t> cuda_rng;  // torch CUDA generator state (empty without CUDA)
  int64_t sampler_epoch = 0;      // DistributedSampler epoch
  int64_t sampler_index = 0;      // next position in this rank's epoch order
};

struct CheckpointMeta {
  int64_t format_version = kFormatVersion;
  int64_t global_step = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;         // next micro-batch within the epoch
  int64_t samples_in_epoch = 0;       // global samples consumed in the epoch (for resharding)
  int64_t world_size = 1;
  int64_t batch_size = 0;             // per-rank micro-batch size at save time
  bool weights_only = false;          // no optimizer/scheduler/rank state
  std::string ddp_runtime_version;
  std::string torch_version;
  std::string hdf5_version;
  std::string created_utc;            // ISO 8601
  std::string config_yaml;            // the full resolved config
  std::string hparams_json;           // the model section of the config, as JSON
  std::string fingerprint;            // architecture: hex xxh3 of names/shapes/dtypes
  std::string optimizer_json;         // optimizer type + param groups (hyperparameters, order)
  std::string scheduler_json;         // scheduler config + step
  std::string grad_scaler_json;       // fp16 mixed precision's loss scaler; empty: none
  std::string callbacks_json;         // stateful callbacks (e.g. the best-k table)
  std::map<std::string, double> metrics;  // monitored metrics at save time
};

struct Checkpoint {
  CheckpointMeta meta;
  std::vector<TensorEntry> tensors;
  std::vector<RankState> ranks;
  // Set by read_checkpoint: true when the whole file matched the size and xxh3 recorded in its
  // sidecar (<file>.sum) before HDF5 opened it; false when there was no sidecar to check
  // (callers should warn). Ignored by the writer.
  bool verified_file = false;
};

uint64_t checksum_bytes(const void* data, size_t bytes);  // xxh3_64
std::string hex64(uint64_t value);  // 16 lowercase hex digits, zero-padded
// Parses what hex64 writes (1 to 16 hex digits, either case); false on anything else.
bool parse_hex64(const std::string& text, uint64_t* value);

}  // namespace ddp::ckpt
