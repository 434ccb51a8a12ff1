// Checkpoint + resume through the Trainer under mpirun: exact (bitwise) resume mid-epoch, with
// sync and async saves; resume on a different world size; fallback from a corrupt newest
// checkpoint; a failing save stops every rank together (or not, per on_error); async saves
// taken while training goes on hold their own step's state.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "checkpoint/commit.h"
#include "checkpoint/format_reader.h"
#include "collectives/agreement.h"
#include "collectives/error.h"
#include "runtime/checkpointer.h"
#include "runtime/config.h"
#include "runtime/state_io.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;
namespace fs = std::filesystem;

constexpr int64_t kTotalSteps = 30;
constexpr int64_t kStopStep = 13;  // mid-epoch for every world size 1..4

Config make_config(const std::string& root, const std::string& name,
                   std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides{
      "trainer.default_root_dir=" + root, "trainer.name=" + name,
      "trainer.max_steps=" + std::to_string(kTotalSteps), "trainer.max_epochs=-1",
      "trainer.batch_size=4", "trainer.progress_bar=off", "trainer.log_every_n_steps=1000",
      "trainer.check_val_every_n_epoch=0", "data.num_samples=112", "data.num_features=10",
      "data.num_classes=4", "model.hidden_sizes=[16, 16]", "model.dropout=0.2",
      "optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.lr=0.05",
      "scheduler.name=cosine", "scheduler.warmup_steps=4", "checkpoint.every_n_epochs=0"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config_from_string("{}", overrides);
}

// Parameters and optimizer state as bytes, for bitwise comparison.
std::vector<std::vector<uint8_t>> full_state(Trainer& t) {
  std::vector<std::vector<uint8_t>> out;
  auto sources = model_sources(t.model());
  auto opt = optimizer_sources(t.optimizer(), t.model());
  sources.insert(sources.end(), opt.begin(), opt.end());
  for (auto& s : sources) {
    std::vector<uint8_t> bytes(s.bytes);
    if (s.bytes) s.copy_to(bytes.data());
    out.push_back(std::move(bytes));
  }
  return out;
}

class ExactResume : public ::testing::TestWithParam<std::string> {};

TEST_P(ExactResume, StopMidEpochAndResumeIsBitwiseIdentical) {
  auto& comm = world();
  const std::string root = test::temp_dir("exact_resume");
  const std::string mode = GetParam();  // "sync" | "async" | "adamw" | "bf16"
  std::vector<std::string> extra;
  if (mode == "async") extra.push_back("checkpoint.async=true");
  if (mode == "adamw") extra.push_back("optimizer.name=adamw");
  if (mode == "bf16") extra.push_back("trainer.precision=bf16-mixed");

  Trainer straight(make_config(root, "straight", extra), comm);
  straight.fit();

  {
    Trainer first(make_config(root, "interrupted", extra), comm);
    first.stop_after_step(kStopStep);
    first.fit();
    ASSERT_EQ(first.state().global_step, kStopStep);
    ASSERT_GT(first.state().batch_in_epoch, 0) << "the stop must be mid-epoch";
  }
  auto resume_extra = extra;
  resume_extra.push_back("checkpoint.resume=auto");
  Trainer resumed(make_config(root, "interrupted", resume_extra), comm);
  EXPECT_EQ(resumed.state().global_step, kStopStep);
  EXPECT_EQ(resumed.checkpointer()->resume_info().global_step, kStopStep);
  resumed.fit();
  EXPECT_EQ(resumed.state().global_step, kTotalSteps);

  const auto a = full_state(straight);
  const auto b = full_state(resumed);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "tensor " << i << " differs";
}

INSTANTIATE_TEST_SUITE_P(Modes, ExactResume, ::testing::Values("sync", "async", "adamw", "bf16"));

TEST(Resume, OnAnotherWorldSizeRecomputesThePosition) {
  auto& comm = world();
  const std::string root = test::temp_dir("reshard");
  {
    Trainer first(make_config(root, "run"), comm);
    first.stop_after_step(kStopStep);
    first.fit();
  }
  // Every rank resumes the W-rank checkpoint as its own 1-rank job.
  MpiCommunicator self(CommunicatorOptions{60.0}, MPI_COMM_SELF);
  const std::string ckpt_dir = root + "/run/checkpoints";
  Trainer one(make_config(root, "one" + std::to_string(comm.rank()),
                          {"checkpoint.resume=" + ckpt_dir + "/last.h5",
                           "checkpoint.dirpath=" + root + "/one" + std::to_string(comm.rank())}),
              self);
  EXPECT_EQ(one.state().global_step, kStopStep);
  EXPECT_EQ(one.checkpointer()->resume_info().resharded, comm.size() != 1);
  // Global samples consumed in the epoch are preserved (up to whole 1-rank batches).
  const auto r = one.fit();
  EXPECT_EQ(r.steps, kTotalSteps);
}

TEST(Resume, OneRankCheckpointResumesOnTheWholeWorld) {
  auto& comm = world();
  const std::string root = test::temp_dir("one_to_many");
  if (comm.rank() == 0) {
    MpiCommunicator self(CommunicatorOptions{60.0}, MPI_COMM_SELF);
    Trainer first(make_config(root, "run"), self);
    first.stop_after_step(kStopStep);
    first.fit();
  }
  comm.barrier();
  Trainer resumed(make_config(root, "run", {"checkpoint.resume=auto"}), comm);
  EXPECT_EQ(resumed.state().global_step, kStopStep);
  EXPECT_EQ(resumed.checkpointer()->resume_info().resharded, comm.size() != 1);
  EXPECT_EQ(resumed.fit().steps, kTotalSteps);
}

TEST(Resume, CorruptNewestFallsBackToThePreviousGoodOne) {
  auto& comm = world();
  const std::string root = test::temp_dir("fallback");
  {
    Trainer first(make_config(root, "run", {"checkpoint.every_n_train_steps=5"}), comm);
    first.stop_after_step(kStopStep);  // saves at 5, 10 and (stop, as last.h5) 13
    first.fit();
  }
  const std::string dir = root + "/run/checkpoints";
  if (comm.rank() == 0) {
    const fs::path newest = fs::path(dir) / "last.h5";  // a file of its own: the stop's save
    ASSERT_EQ(ckpt::read_meta(newest.string()).global_step, kStopStep);
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(newest) / 2));
    f.put('\x5a');
    f.put('\xa5');
  }
  comm.barrier();
  Trainer resumed(make_config(root, "run", {"checkpoint.resume=auto"}), comm);
  EXPECT_EQ(resumed.state().global_step, 10);
}

TEST(Save, AsyncSavesMidTrainingHoldTheStateOfTheirStep) {
  // An async save copies parameters and optimizer state during the next step. With its
  // background copy held back (DDP_FAULT_SLOW_SNAPSHOT), the training thread reaches the next
  // optimizer.step() first: Checkpointer::before_update() must do the copy there, or the file
  // would hold a later step's state. Every file must equal the synchronous run's, bitwise.
  auto& comm = world();
  const std::string root = test::temp_dir("async_mid");
  const std::vector<std::string> periodic{
      "checkpoint.every_n_train_steps=5", "checkpoint.save_top_k=-1",
      "checkpoint.keep_last_n=-1", "checkpoint.save_last=false", "optimizer.name=adamw"};
  {
    Trainer sync(make_config(root, "sync", periodic), comm);
    sync.fit();
  }
  {
    ::setenv("DDP_FAULT_SLOW_SNAPSHOT", "0.3", 1);
    auto extra = periodic;
    extra.push_back("checkpoint.async=true");
    Trainer async(make_config(root, "async", extra), comm);
    async.fit();
    ::unsetenv("DDP_FAULT_SLOW_SNAPSHOT");
    EXPECT_EQ(async.checkpointer()->saves_completed(), kTotalSteps / 5);  // the last step's too
  }
  if (comm.rank() != 0) return;
  int compared = 0;
  for (const auto& e : fs::directory_iterator(root + "/sync/checkpoints")) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".h5") continue;
    const ckpt::Checkpoint a = ckpt::read_checkpoint(e.path().string());
    const ckpt::Checkpoint b = ckpt::read_checkpoint(root + "/async/checkpoints/" + name);
    EXPECT_EQ(a.meta.global_step, b.meta.global_step) << name;
    ASSERT_EQ(a.tensors.size(), b.tensors.size()) << name;
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      EXPECT_EQ(a.tensors[i].path, b.tensors[i].path) << name;
      EXPECT_TRUE(a.tensors[i].data == b.tensors[i].data)
          << name << ": " << a.tensors[i].path << " differs from the synchronous run's";
    }
    ++compared;
  }
  EXPECT_EQ(compared, kTotalSteps / 5);
}

TEST(Resume, ExplicitMissingPathFailsOnEveryRank) {
  auto& comm = world();
  const std::string root = test::temp_dir("missing");
  try {
    Trainer t(make_config(root, "run", {"checkpoint.resume=" + root + "/nope.h5"}), comm);
    FAIL() << "expected an error";
  } catch (const AgreedError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("nope.h5"), std::string::npos) << e.what();
  }
}

TEST(Save, FailureOnRankZeroStopsEveryRankOrIsSkipped) {
  auto& comm = world();
  const std::string root = test::temp_dir("save_fail");
  for (const std::string policy : {"stop", "continue"}) {
    Trainer t(make_config(root, "run_" + policy,
                          {"checkpoint.every_n_train_steps=4", "checkpoint.on_error=" + policy}),
              comm);
    // Make the directory unusable: replace it by a plain file (root ignores permissions).
    if (comm.rank() == 0) {
      fs::remove_all(t.checkpointer()->dirpath());
      std::ofstream(t.checkpointer()->dirpath()) << "not a directory";
    }
    comm.barrier();
    if (policy == "stop") {
      try {
        t.fit();
        FAIL() << "expected every rank to stop";
      } catch (const AgreedError& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kIOError) << e.what();
        EXPECT_NE(std::string(e.what()).find("checkpoint save at step 4"), std::string::npos)
            << e.what();
      }
      EXPECT_EQ(t.state().global_step, 4);
    } else {
      EXPECT_NO_THROW(t.fit());
      EXPECT_EQ(t.state().global_step, kTotalSteps);
    }
  }
}

// Checkpoint files (*.h5 but last.h5) in `dir`, sorted.
std::vector<std::string> h5_files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".h5" && name.front() != '.') names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The last epoch's save is made even without save_last (the loop used to leave before the
// epoch-end hook), and every epoch-end save is named by the 0-based epoch that ended.
TEST(Schedule, EveryEpochEndIsSavedAndNamedByItsIndex) {
  auto& comm = world();
  const std::string root = test::temp_dir("schedule_epochs");
  Trainer t(make_config(root, "run",
                        {"trainer.max_steps=-1", "trainer.max_epochs=3", "scheduler.name=none",
                         "checkpoint.every_n_epochs=1", "checkpoint.save_top_k=-1",
                         "checkpoint.save_last=false", "checkpoint.keep_last_n=0"}),
            comm);
  const int64_t spe = t.steps_per_epoch();
  t.fit();
  if (comm.rank() != 0) return;
  std::vector<std::string> expected;
  for (int64_t e = 0; e < 3; ++e) {
    expected.push_back("epoch=" + std::to_string(e) + "-step=" + std::to_string((e + 1) * spe) +
                       ".h5");
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(h5_files(t.checkpointer()->dirpath()), expected);
}

// max_steps ending an epoch early still gets Lightning's epoch-end save.
TEST(Schedule, AnEpochCutShortByMaxStepsIsSaved) {
  auto& comm = world();
  const std::string root = test::temp_dir("schedule_max_steps");
  Trainer probe(make_config(root, "probe", {"checkpoint.enabled=false"}), comm);
  const int64_t stop = probe.steps_per_epoch() + 2;
  Trainer t(make_config(root, "run",
                        {"trainer.max_steps=" + std::to_string(stop),
                         "checkpoint.every_n_epochs=1", "checkpoint.save_last=false",
                         "checkpoint.keep_last_n=0"}),
            comm);
  t.fit();
  if (comm.rank() != 0) return;
  EXPECT_EQ(h5_files(t.checkpointer()->dirpath()),
            (std::vector<std::string>{"epoch=1-step=" + std::to_string(stop) + ".h5"}));
}

// A failed save (on_error: continue) changes neither the policy nor the directory: the next
// good save deletes the file it replaces, and no state names the file that was never written.
TEST(Schedule, AFailedSaveLeavesTheBookkeepingAsItWas) {
  auto& comm = world();
  const std::string root = test::temp_dir("schedule_failed");
  Trainer t(make_config(root, "run",
                        {"checkpoint.every_n_train_steps=4", "checkpoint.save_last=false",
                         "checkpoint.keep_last_n=0", "checkpoint.on_error=continue",
                         "checkpoint.filename='{step}'", "trainer.max_steps=12"}),
            comm);
  t.stop_after_step(5);
  t.fit();
  const std::string dir = t.checkpointer()->dirpath();
  const std::string failing = dir + "/step=8.h5";
  if (comm.rank() == 0) {
    // The save at step 8 cannot create its temporary: a directory is in the way.
    fs::create_directories(ckpt::temp_path_for(failing));
  }
  comm.barrier();
  t.stop_after_step(-1);
  t.fit();
  EXPECT_EQ(t.state().global_step, 12);
  if (comm.rank() != 0) return;
  fs::remove_all(ckpt::temp_path_for(failing));
  EXPECT_EQ(h5_files(dir), (std::vector<std::string>{"step=12.h5"}));
  const auto meta = ckpt::read_meta(dir + "/step=12.h5");
  EXPECT_EQ(meta.callbacks_json.find("step=8"), std::string::npos) << meta.callbacks_json;
  EXPECT_EQ(meta.callbacks_json.find("step=4"), std::string::npos) << meta.callbacks_json;
}

}  // namespace
}  // namespace ddp
