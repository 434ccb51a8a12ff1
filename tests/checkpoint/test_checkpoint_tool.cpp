// The ddp-checkpoint executable on files written by FileWriter + commit: ls, inspect --json,
// verify (good, corrupt, missing, directory), diff with a known difference.
#include <gtest/gtest.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "checkpoint/format_reader.h"
#include "checkpoint/h5_check.h"
#include "tests/checkpoint/ckpt_fixtures.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::sample_checkpoint;

ddp::test::CommandResult tool(const std::string& args) {
  return ddp::test::run_command(ddp::test::bin_path("ddp-checkpoint") + " " + args);
}

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// The line of `text` that contains `needle` ("" if none).
std::string line_with(const std::string& text, const std::string& needle) {
  const size_t at = text.find(needle);
  if (at == std::string::npos) return "";
  const size_t begin = text.rfind('\n', at) == std::string::npos ? 0 : text.rfind('\n', at) + 1;
  return text.substr(begin, text.find('\n', at) - begin);
}

// Three checkpoints; latest -> step=300; best by val_loss (min) -> step=200.
std::string make_run_dir() {
  const std::string dir = ddp::test::temp_dir("tool");
  const double losses[] = {0.9, 0.2, 0.4};
  for (int i = 0; i < 3; ++i) {
    Checkpoint c = sample_checkpoint(100 * (i + 1), 1.0 + i);
    c.meta.metrics = {{"val_loss", losses[i]}};
    nlohmann::json best = {{"monitor", "val_loss"}, {"mode", "min"}, {"best_k", nlohmann::json::array()}};
    for (int j = 0; j <= i; ++j) {
      best["best_k"].push_back({{"file", fmt::format("step={}.h5", 100 * (j + 1))},
                                {"score", losses[j]}});
    }
    c.meta.callbacks_json = best.dump();
    test::save_checkpoint(dir, fmt::format("step={}.h5", 100 * (i + 1)), c);
  }
  return dir;
}

TEST(CheckpointTool, LsShowsStepsMetricsLatestAndBest) {
  const std::string dir = make_run_dir();
  const auto r = tool("ls " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(line_with(r.output, "step=300.h5"), "latest")) << r.output;
  EXPECT_TRUE(contains(line_with(r.output, "step=200.h5"), "best")) << r.output;
  EXPECT_TRUE(contains(line_with(r.output, "step=200.h5"), "val_loss=0.2")) << r.output;
  EXPECT_TRUE(contains(line_with(r.output, "step=100.h5"), "top-k")) << r.output;
  EXPECT_LT(r.output.find("step=300.h5"), r.output.find("step=100.h5"));  // newest first
  EXPECT_NE(tool("ls " + dir + "/nope").exit_code, 0);
}

TEST(CheckpointTool, InspectJsonParses) {
  const std::string dir = make_run_dir();
  const auto r = tool("inspect --json " + dir + "/step=200.h5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["global_step"], 200);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["format_version"], kFormatVersion);
  EXPECT_EQ(j["metrics"]["val_loss"], 0.2);
  EXPECT_EQ(j["hparams"]["hidden"], 4);
  ASSERT_TRUE(j["tensors"].is_array());
  EXPECT_EQ(j["tensors"][0]["path"], "model/layers.0.weight");
  EXPECT_EQ(j["tensors"][0]["dtype"], "float32");
  EXPECT_EQ(j["tensors"][0]["shape"], nlohmann::json({4, 3}));
  EXPECT_EQ(j["ranks"].size(), 2u);
  EXPECT_FALSE(j["sidecar"].is_null());
  const auto text = tool("inspect " + dir + "/step=200.h5");
  EXPECT_EQ(text.exit_code, 0) << text.output;
  EXPECT_TRUE(contains(text.output, "model/emb.weight")) << text.output;
}

TEST(CheckpointTool, VerifyGoodCorruptAndMissing) {
  const std::string dir = make_run_dir();
  auto r = tool("verify " + dir + "/step=100.h5");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "whole-file checksum verified")) << r.output;
  r = tool("verify " + dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "latest.json -> step=300.h5")) << r.output;

  // Flip a byte inside a dataset of step=200.h5.
  const std::string victim = dir + "/step=200.h5";
  test::flip_byte(victim, dataset_file_offset(victim, "model/layers.0.bias") + 2);
  r = tool("verify " + victim);
  EXPECT_EQ(r.exit_code, kExitIO) << r.output;
  EXPECT_TRUE(contains(r.output, "checksum mismatch")) << r.output;
  r = tool("verify " + dir);  // the directory fails because one file does
  EXPECT_EQ(r.exit_code, kExitIO) << r.output;
  EXPECT_TRUE(contains(r.output, "FAIL  " + victim)) << r.output;

  // Without the sidecar, the per-dataset checksum names the dataset.
  default_file_system().remove(victim + ".sum");
  r = tool("verify " + victim);
  EXPECT_EQ(r.exit_code, kExitIO) << r.output;
  EXPECT_TRUE(contains(r.output, "/model/layers.0.bias")) << r.output;

  r = tool("verify " + dir + "/missing.h5");
  EXPECT_EQ(r.exit_code, kExitInvalidInput) << r.output;
  test::spit(dir + "/notes.h5", "not hdf5");
  r = tool("inspect " + dir + "/notes.h5");
  EXPECT_EQ(r.exit_code, kExitInvalidInput) << r.output;
  EXPECT_TRUE(contains(r.output, "not an HDF5 file")) << r.output;
}

TEST(CheckpointTool, VerifyDirectoryWithBrokenPointer) {
  const std::string dir = make_run_dir();
  test::spit(dir + "/latest.json", "{\"file\": \"step=999.h5\"");
  const auto r = tool("verify " + dir);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "latest.json")) << r.output;
}

TEST(CheckpointTool, DiffReportsMaxAbsDifferenceAndKeyChanges) {
  const std::string dir = ddp::test::temp_dir("tool-diff");
  Checkpoint a = sample_checkpoint(100);
  Checkpoint b = a;
  TensorEntry& w = b.tensors[0];  // model/layers.0.weight, float32
  float v;
  std::memcpy(&v, w.data.data() + 5 * 4, 4);
  v += 0.75f;
  std::memcpy(w.data.data() + 5 * 4, &v, 4);
  b.tensors[1].shape = {2, 2};                   // model/layers.0.bias: shape change
  b.tensors.erase(b.tensors.begin() + 6);        // model/ids only in A
  b.tensors.push_back(test::make_tensor("model/extra", DType::kFloat32, {2}));
  test::save_checkpoint(dir, "a.h5", a);
  test::save_checkpoint(dir, "b.h5", b);
  const auto r = tool("diff " + dir + "/a.h5 " + dir + "/b.h5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(line_with(r.output, "differ  model/layers.0.weight"), "max_abs_diff=0.75"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "1 of 12 elements differ")) << r.output;
  EXPECT_TRUE(contains(r.output, "mismatch  model/layers.0.bias: float32 [4] vs float32 [2, 2]"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "only in A  model/ids")) << r.output;
  EXPECT_TRUE(contains(r.output, "only in B  model/extra")) << r.output;
  const auto same = tool("diff " + dir + "/a.h5 " + dir + "/a.h5");
  EXPECT_EQ(same.exit_code, 0);
  EXPECT_TRUE(contains(same.output, "0 differ")) << same.output;
}

}  // namespace
}  // namespace ddp::ckpt
