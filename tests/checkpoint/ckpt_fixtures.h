// Shared fixtures for tests/checkpoint: a checkpoint with every dtype and awkward shape, and
// helpers to write, commit and damage checkpoint files.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include <fmt/format.h>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_writer.h"
#include "collectives/dtype.h"

namespace ddp::ckpt::test {

// Values v_i = seed + 0.25 * i, stored as `dtype`.
inline TensorEntry make_tensor(const std::string& path, DType dtype, std::vector<int64_t> shape,
                               double seed = 1.0) {
  TensorEntry t;
  t.path = path;
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  t.data.resize(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    const double v = seed + 0.25 * static_cast<double>(i);
    uint8_t* p = t.data.data() + i * dtype_size(dtype);
    auto store = [p](auto x) { std::memcpy(p, &x, sizeof(x)); };
    switch (dtype) {
      case DType::kFloat32: store(static_cast<float>(v)); break;
      case DType::kFloat64: store(v); break;
      case DType::kFloat16: store(float_to_half(static_cast<float>(v))); break;
      case DType::kBFloat16: store(float_to_bf16(static_cast<float>(v))); break;
      case DType::kInt32: store(static_cast<int32_t>(v * 4)); break;
      case DType::kInt64: store(static_cast<int64_t>(v * 4)); break;
      case DType::kUInt8: store(static_cast<uint8_t>(static_cast<int>(v * 4) & 0xff)); break;
    }
  }
  return t;
}

inline Checkpoint sample_checkpoint(int64_t step = 100, double seed = 1.0) {
  Checkpoint c;
  CheckpointMeta& m = c.meta;
  m.global_step = step;
  m.epoch = step / 50;
  m.batch_in_epoch = 7;
  m.samples_in_epoch = 224;
  m.world_size = 2;
  m.batch_size = 16;
  m.ddp_runtime_version = "0.1.0";
  m.torch_version = "1.13.0";
  m.created_utc = "2024-01-02T03:04:05Z";
  m.config_yaml = "model:\n  name: mlp\ntrainer:\n  max_steps: 40\n";
  m.hparams_json = R"({"name": "mlp", "hidden": 4})";
  m.fingerprint = "00112233aabbccdd";
  m.optimizer_json = R"({"type": "adamw", "param_groups": [{"lr": 0.001}]})";
  m.scheduler_json = "";  // empty strings must round-trip too
  m.callbacks_json =
      R"({"best_k": [{"file": "step=100.h5", "score": 0.5}], "monitor": "val_loss", "mode": "min"})";
  m.metrics = {{"val_loss", 0.25 * seed}, {"train/loss", 0.5}};
  c.tensors = {
      make_tensor("model/layers.0.weight", DType::kFloat32, {4, 3}, seed),
      make_tensor("model/layers.0.bias", DType::kFloat32, {4}, seed),
      make_tensor("model/emb.weight", DType::kFloat16, {5, 2}, seed),
      make_tensor("model/norm.scale", DType::kBFloat16, {3}, seed),
      make_tensor("model/bn.num_batches_tracked", DType::kInt64, {}, seed),
      make_tensor("model/mask", DType::kUInt8, {2, 2, 2}, seed),
      make_tensor("model/ids", DType::kInt32, {3}, seed),
      make_tensor("model/empty", DType::kFloat32, {0, 4}, seed),
      make_tensor("model/f64", DType::kFloat64, {2}, seed),
      make_tensor("optimizer/layers.0.weight/exp_avg", DType::kFloat32, {4, 3}, seed),
      make_tensor("optimizer/layers.0.weight/step", DType::kFloat32, {}, seed),
  };
  RankState r0;
  r0.rank = 0;
  r0.cpu_rng = {1, 2, 3, 4, 5};
  r0.cuda_rng = {9, 8, 7};
  r0.sampler_epoch = 2;
  r0.sampler_index = 112;
  RankState r1 = r0;
  r1.rank = 1;
  r1.cpu_rng = {6, 7};
  r1.cuda_rng = {};  // a CPU-only rank
  r1.sampler_index = 113;
  c.ranks = {r0, r1};
  return c;
}

// Returns the writer's block digests (FileWriter::block_digests).
inline BlockDigests write_checkpoint_file(const std::string& path, const Checkpoint& c) {
  FileWriter w(path, c.meta);
  for (const TensorEntry& t : c.tensors) w.add_tensor(t);
  for (const RankState& r : c.ranks) w.add_rank_state(r);
  w.close();
  return w.block_digests();
}

// Writes to the temporary name and commits with the writer's block digests, as rank 0 does.
inline CommitInfo save_checkpoint(const std::string& dir, const std::string& name,
                                  const Checkpoint& c, bool update_latest = true,
                                  FileSystem& fs = default_file_system()) {
  const std::string final_path = join_path(dir, name);
  const std::string tmp = temp_path_for(final_path);
  const BlockDigests digests = write_checkpoint_file(tmp, c);
  return commit_checkpoint(fs, tmp, final_path, c.meta.global_step, update_latest, &digests);
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

inline void copy_file(const std::string& from, const std::string& to) { spit(to, slurp(from)); }

inline void flip_byte(const std::string& path, uint64_t offset) {
  std::string bytes = slurp(path);
  ASSERT_LT(offset, bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x5a);
  spit(path, bytes);
}

}  // namespace ddp::ckpt::test
