// load_from_checkpoint (Lightning's Model.load_from_checkpoint): map_location, strict and
// partial loading with a report, hyperparameter overrides, and the error messages.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/checkpointer.h"
#include "runtime/load_api.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

// Trains a few steps and returns the path of the last checkpoint (and the trained model).
std::string train_and_save(const std::string& root, std::shared_ptr<Model>* model_out) {
  Config c = load_config_from_string(
      "{}", {"trainer.default_root_dir=" + root, "trainer.max_steps=6", "trainer.max_epochs=-1",
           "trainer.progress_bar=off", "trainer.check_val_every_n_epoch=0",
           "data.num_samples=256", "model.hidden_sizes=[32, 16]"});
  static MpiCommunicator self(CommunicatorOptions{60.0}, MPI_COMM_SELF);
  Trainer t(c, self);
  t.fit();
  if (model_out) *model_out = t.model_ptr();
  for (const auto& e : std::filesystem::directory_iterator(t.checkpointer()->dirpath())) {
    const std::string name = e.path().filename().string();
    if (name.size() > 12 && name.substr(name.size() - 9) == "step=6.h5") return e.path().string();
  }
  ADD_FAILURE() << "no checkpoint for step 6";
  return "";
}

TEST(LoadFromCheckpoint, RebuildsTheModelWithIdenticalWeights) {
  const std::string root = test::temp_dir("load_ok");
  std::shared_ptr<Model> trained;
  const std::string path = train_and_save(root, &trained);
  const LoadedModel loaded = load_from_checkpoint(path);
  EXPECT_TRUE(loaded.report.clean());
  EXPECT_EQ(loaded.meta.global_step, 6);
  auto want = trained->named_parameters();
  for (const auto& item : loaded.model->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), want[item.key()])) << item.key();
    EXPECT_TRUE(item.value().device().is_cpu());
  }
  auto x = torch::randn({3, 64});
  EXPECT_TRUE(torch::equal(loaded.model->forward(x), trained->forward(x)));
}

TEST(LoadFromCheckpoint, StrictMismatchNamesEveryProblemInOneMessage) {
  const std::string root = test::temp_dir("load_strict");
  const std::string path = train_and_save(root, nullptr);
  try {
    load_from_checkpoint(path, LoadOptions{"cpu", true, {"model.hidden_sizes=[48, 16, 8]"}});
    FAIL() << "expected a mismatch";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(msg.find("missing keys: layers.3.weight, layers.3.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'layers.0.weight': saved shape [32, 64] float32, model expects [48, 64] float32"),
              std::string::npos)
        << msg;
  }
}

TEST(LoadFromCheckpoint, NonStrictLoadsWhatMatchesAndReports) {
  const std::string root = test::temp_dir("load_partial");
  const std::string path = train_and_save(root, nullptr);
  // Same first two layers, one more on top: fine-tuning a deeper head.
  const LoadedModel m =
      load_from_checkpoint(path, LoadOptions{"cpu", false, {"model.hidden_sizes=[32, 16, 8]"}});
  EXPECT_FALSE(m.report.clean());
  EXPECT_EQ(m.report.missing, (std::vector<std::string>{"layers.3.weight", "layers.3.bias"}));
  EXPECT_EQ(m.report.mismatched.size(), 2u);  // layers.2.* now 16 -> 8 instead of 16 -> 10
  EXPECT_TRUE(m.report.unexpected.empty());
  EXPECT_EQ(m.config.model.hidden_sizes, (std::vector<int64_t>{32, 16, 8}));
}

TEST(LoadFromCheckpoint, BadInputsHaveTheirOwnMessages) {
  const std::string root = test::temp_dir("load_bad");
  const std::string path = train_and_save(root, nullptr);
  try {
    load_from_checkpoint(root + "/missing.h5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound) << e.what();
  }
  try {
    load_from_checkpoint(path, LoadOptions{"cuda", true, {}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("map_location"), std::string::npos) << e.what();
  }
  try {
    load_from_checkpoint(path, LoadOptions{"tpu", true, {}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  }
  const std::string text = root + "/notes.h5";
  std::ofstream(text) << "not a checkpoint";
  try {
    load_from_checkpoint(text);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  }
  // A flipped byte in the middle: the whole-file checksum catches it before HDF5 opens it.
  const std::string copy = root + "/copy.h5";
  std::filesystem::copy_file(path, copy);
  std::filesystem::copy_file(path + ".sum", copy + ".sum");
  {
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(copy) / 2));
    f.put('\x42');
  }
  try {
    load_from_checkpoint(copy);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorruption) << e.what();
  }
}

}  // namespace
}  // namespace ddp
