// The atomic commit: sidecar and latest.json contents, and that a failure or a crash before any
// step leaves the previous checkpoint and pointer valid (FaultInjectingFileSystem).
#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>

#include <nlohmann/json.hpp>

#include "checkpoint/commit.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/sidecar.h"
#include "tests/checkpoint/ckpt_fixtures.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::sample_checkpoint;
using test::save_checkpoint;

std::vector<std::string> temporaries_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& name : default_file_system().list_dir(dir)) {
    if (is_temporary_name(name)) out.push_back(name);
  }
  return out;
}

TEST(CheckpointCommit, WritesSidecarAndLatestPointer) {
  const std::string dir = ddp::test::temp_dir("commit-basic");
  const CommitInfo info = save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
  EXPECT_EQ(info.path, dir + "/step=100.h5");
  EXPECT_TRUE(info.latest_updated);
  EXPECT_EQ(info.bytes, default_file_system().file_size(info.path));
  EXPECT_EQ(info.checksum, default_file_system().hash_file(info.path).checksum);
  EXPECT_TRUE(temporaries_in(dir).empty());

  const auto latest = nlohmann::json::parse(test::slurp(dir + "/latest.json"));
  EXPECT_EQ(latest["file"], "step=100.h5");
  EXPECT_EQ(latest["global_step"], 100);
  EXPECT_EQ(latest["bytes"], info.bytes);
  EXPECT_EQ(latest["checksum"]["algorithm"], "xxh3_64_b64k");
  EXPECT_EQ(latest["checksum"]["value"], hex64(info.checksum));

  const auto sidecar = nlohmann::json::parse(test::slurp(info.sidecar_path));
  EXPECT_EQ(sidecar["bytes"], info.bytes);
  EXPECT_EQ(sidecar["algorithm"], "xxh3_64_b64k");
  EXPECT_EQ(sidecar["checksum"], hex64(info.checksum));
  EXPECT_EQ(sidecar["global_step"], 100);
  EXPECT_FALSE(sidecar.contains("replaces"));

  std::string warning;
  const auto p = read_latest(default_file_system(), dir, &warning);
  ASSERT_TRUE(p) << warning;
  EXPECT_EQ(p->path, info.path);
  EXPECT_EQ(p->checksum, info.checksum);

  // Without update_latest the pointer stays.
  save_checkpoint(dir, "step=200.h5", sample_checkpoint(200), /*update_latest=*/false);
  EXPECT_EQ(read_latest(default_file_system(), dir)->global_step, 100);
}

TEST(CheckpointCommit, ReusedNameEndsWithAPlainSidecar) {
  const std::string dir = ddp::test::temp_dir("commit-reuse");
  save_checkpoint(dir, "last.h5", sample_checkpoint(100));
  const CommitInfo info = save_checkpoint(dir, "last.h5", sample_checkpoint(200, 2.0));
  const auto sidecar = nlohmann::json::parse(test::slurp(info.sidecar_path));
  EXPECT_FALSE(sidecar.contains("replaces"));
  EXPECT_EQ(sidecar["global_step"], 200);
  EXPECT_TRUE(verify_file(dir + "/last.h5").verified_file);
  EXPECT_EQ(read_meta(dir + "/last.h5").global_step, 200);
}

// Everything a restart relies on: latest.json usable, naming a file that verifies against its
// sidecar; every listed checkpoint verifies; `previous` (if a distinct file) is intact.
void expect_consistent(const std::string& dir, const std::string& previous,
                       int64_t previous_step, int64_t new_step) {
  std::string warning;
  const auto latest = read_latest(default_file_system(), dir, &warning);
  ASSERT_TRUE(latest) << "latest.json unusable: " << warning;
  EXPECT_TRUE(latest->global_step == previous_step || latest->global_step == new_step);
  const VerifyResult v = verify_file(latest->path);
  ASSERT_TRUE(v.ok()) << v.error->what();
  EXPECT_TRUE(v.verified_file);
  const int64_t step = read_meta(latest->path).global_step;
  EXPECT_TRUE(step == previous_step || step == new_step);
  for (const CheckpointInfo& c : list_checkpoints(default_file_system(), dir)) {
    EXPECT_TRUE(c.sidecar) << c.file;
    const VerifyResult r = verify_file(c.path);
    EXPECT_TRUE(r.ok() && r.verified_file) << c.file << ": " << (r.ok() ? "" : r.error->what());
  }
  if (!previous.empty()) {
    EXPECT_TRUE(verify_file(join_path(dir, previous)).ok());
  }
}

struct CrashCase {
  const char* new_name;  // "step=200.h5", or "step=100.h5" to re-use the previous name
  bool partial_write;
};

class CommitCrash : public ::testing::TestWithParam<CrashCase> {};

TEST_P(CommitCrash, CrashBeforeEveryStepKeepsAValidCheckpoint) {
  const CrashCase cc = GetParam();
  const bool reuse = std::string(cc.new_name) == "step=100.h5";
  // A dry run counts the mutating steps of this commit.
  int steps = 0;
  {
    const std::string dir = ddp::test::temp_dir("commit-count");
    save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
    FaultInjectingFileSystem fs(default_file_system());
    save_checkpoint(dir, cc.new_name, sample_checkpoint(200, 2.0), true, fs);
    steps = fs.mutations();
    std::filesystem::remove_all(dir);
  }
  ASSERT_EQ(steps, reuse ? 12 : 9);
  for (int k = 1; k <= steps; ++k) {
    SCOPED_TRACE(fmt::format("crash before mutation {} of {}", k, steps));
    const std::string dir = ddp::test::temp_dir(fmt::format("commit-crash-{}", k));
    save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
    FaultInjectingFileSystem fs(default_file_system());
    fs.crash_before_mutation(k, cc.partial_write);
    EXPECT_THROW(save_checkpoint(dir, cc.new_name, sample_checkpoint(200, 2.0), true, fs),
                 SimulatedCrash);
    expect_consistent(dir, reuse ? "" : "step=100.h5", 100, 200);
    // The next start cleans up, and saving works again.
    cleanup_temporaries(default_file_system(), dir);
    EXPECT_TRUE(temporaries_in(dir).empty());
    save_checkpoint(dir, "step=300.h5", sample_checkpoint(300, 3.0));
    expect_consistent(dir, "", 300, 300);
    EXPECT_EQ(read_latest(default_file_system(), dir)->global_step, 300);
    std::filesystem::remove_all(dir);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CommitCrash,
                         ::testing::Values(CrashCase{"step=200.h5", false},
                                           CrashCase{"step=200.h5", true},
                                           CrashCase{"step=100.h5", false},
                                           CrashCase{"step=100.h5", true}),
                         [](const ::testing::TestParamInfo<CrashCase>& info) {
                           return std::string(std::string(info.param.new_name) == "step=100.h5"
                                                  ? "ReusedName" : "NewName") +
                                  (info.param.partial_write ? "PartialWrite" : "");
                         });

// last.h5 re-pointed at a newer checkpoint: a crash before any step leaves a name whose content
// its sidecar vouches for (the old checkpoint or the new one), never a pair that disagrees.
TEST(CheckpointCommit, RepointingANameHasNoWindow) {
  auto prepare = [](const std::string& dir) {
    save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
    point_name_at(default_file_system(), join_path(dir, "step=100.h5"), join_path(dir, "last.h5"));
    save_checkpoint(dir, "step=200.h5", sample_checkpoint(200, 2.0));
  };
  int steps = 0;
  {
    const std::string dir = ddp::test::temp_dir("repoint-count");
    prepare(dir);
    FaultInjectingFileSystem fs(default_file_system());
    point_name_at(fs, join_path(dir, "step=200.h5"), join_path(dir, "last.h5"));
    steps = fs.mutations();
    EXPECT_EQ(read_meta(join_path(dir, "last.h5")).global_step, 200);
    const auto sidecar = read_sidecar(default_file_system(), join_path(dir, "last.h5"));
    ASSERT_TRUE(sidecar);
    EXPECT_FALSE(sidecar->replaces);  // plain again once the name points at the new file
    std::filesystem::remove_all(dir);
  }
  ASSERT_GE(steps, 5);
  for (int k = 1; k <= steps; ++k) {
    for (const bool partial : {false, true}) {
      SCOPED_TRACE(fmt::format("crash before mutation {} of {} (partial write: {})", k, steps,
                               partial));
      const std::string dir = ddp::test::temp_dir(fmt::format("repoint-crash-{}", k));
      prepare(dir);
      FaultInjectingFileSystem fs(default_file_system());
      fs.crash_before_mutation(k, partial);
      EXPECT_THROW(point_name_at(fs, join_path(dir, "step=200.h5"), join_path(dir, "last.h5")),
                   SimulatedCrash);
      const VerifyResult v = verify_file(join_path(dir, "last.h5"));
      ASSERT_TRUE(v.ok()) << v.error->what();
      EXPECT_TRUE(v.verified_file);
      const int64_t step = read_meta(join_path(dir, "last.h5")).global_step;
      EXPECT_TRUE(step == 100 || step == 200) << step;
      // The next start cleans up, and pointing the name works again.
      cleanup_temporaries(default_file_system(), dir);
      EXPECT_TRUE(temporaries_in(dir).empty());
      point_name_at(default_file_system(), join_path(dir, "step=200.h5"), join_path(dir, "last.h5"));
      EXPECT_EQ(read_meta(join_path(dir, "last.h5")).global_step, 200);
      EXPECT_TRUE(verify_file(join_path(dir, "last.h5")).ok());
      std::filesystem::remove_all(dir);
    }
  }
}

TEST(CheckpointCommit, FailureAtEveryStepIsIOErrorAndKeepsAValidCheckpoint) {
  for (const bool reuse : {false, true}) {
    const std::string name = reuse ? "step=100.h5" : "step=200.h5";
    for (int k = 1;; ++k) {  // until the k-th mutation is past the end of the commit
      ASSERT_LT(k, 30);
      SCOPED_TRACE(fmt::format("{}: EIO at mutation {}", name, k));
      const std::string dir = ddp::test::temp_dir(fmt::format("commit-fail-{}-{}", reuse, k));
      save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
      FaultInjectingFileSystem fs(default_file_system());
      fs.fail_mutation(k, EIO);
      try {
        save_checkpoint(dir, name, sample_checkpoint(200, 2.0), true, fs);
        EXPECT_GE(k, reuse ? 12 : 9);  // every step before that was injected
        break;
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kIOError);
        EXPECT_NE(std::string(e.what()).find("EIO"), std::string::npos) << e.what();
      }
      expect_consistent(dir, reuse ? "" : "step=100.h5", 100, 200);
      std::filesystem::remove_all(dir);
    }
  }
}

// Holds the fsync of the checkpoint's temporary until the sidecar's and latest.json's
// temporaries have been written (at most 5 s): a commit that waits for that fsync before
// writing them runs into the timeout, and overlapped() says so.
class FsyncOverlapProbe : public PosixFileSystem {
 public:
  void fsync_file(const std::string& path) override {
    if (path.find(".h5.tmp-") != std::string::npos) {
      std::unique_lock<std::mutex> lock(mu_);
      overlapped_ = cv_.wait_for(lock, std::chrono::seconds(5), [&] { return writes_ >= 2; });
    }
    PosixFileSystem::fsync_file(path);
  }
  void write_file(const std::string& path, const std::string& data) override {
    PosixFileSystem::write_file(path, data);
    std::lock_guard<std::mutex> lock(mu_);
    ++writes_;
    cv_.notify_all();
  }
  bool overlapped() {
    std::lock_guard<std::mutex> lock(mu_);
    return overlapped_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int writes_ = 0;
  bool overlapped_ = false;
};

TEST(CheckpointCommit, SmallFilesAreWrittenWhileTheDataIsFsynced) {
  const std::string dir = ddp::test::temp_dir("commit-overlap");
  FsyncOverlapProbe fs;
  const CommitInfo info = save_checkpoint(dir, "step=100.h5", sample_checkpoint(100), true, fs);
  EXPECT_TRUE(fs.overlapped()) << "the sidecar and latest.json waited for the data's fsync";
  EXPECT_TRUE(info.latest_updated);
  expect_consistent(dir, "", 100, 100);
}

TEST(CheckpointCommit, DiskFullDuringCommitNamesEnospcAndCleansUp) {
  const std::string dir = ddp::test::temp_dir("commit-enospc");
  save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
  FaultInjectingFileSystem fs(default_file_system());
  fs.fail_call(FsOp::kWriteFile, 1, ENOSPC);  // the sidecar
  try {
    save_checkpoint(dir, "step=200.h5", sample_checkpoint(200), true, fs);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIOError);
    EXPECT_NE(std::string(e.what()).find("ENOSPC"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos);
  }
  EXPECT_TRUE(temporaries_in(dir).empty());  // the big temporary is gone: space is freed
  EXPECT_FALSE(default_file_system().exists(dir + "/step=200.h5"));
  EXPECT_FALSE(default_file_system().exists(dir + "/step=200.h5.sum"));
  expect_consistent(dir, "step=100.h5", 100, 100);
}

TEST(CheckpointCommit, CleanupRemovesTemporariesAndOrphanSidecarsOnly) {
  const std::string dir = ddp::test::temp_dir("commit-cleanup");
  save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
  for (const char* leftover : {".step=200.h5.tmp-123", ".latest.json.tmp-9", "gone.h5.sum",
                               ".step=200.h5.sum.tmp-123"}) {
    test::spit(join_path(dir, leftover), "x");
  }
  test::spit(dir + "/notes.txt", "kept");
  EXPECT_EQ(cleanup_temporaries(default_file_system(), dir), 4);
  EXPECT_EQ(default_file_system().list_dir(dir),
            (std::vector<std::string>{"latest.json", "notes.txt", "step=100.h5", "step=100.h5.sum"}));
  EXPECT_EQ(cleanup_temporaries(default_file_system(), dir), 0);
}

TEST(CheckpointCommit, ReadLatestNeverThrowsOnBadContent) {
  const std::string dir = ddp::test::temp_dir("commit-latest");
  FileSystem& fs = default_file_system();
  std::string warning = "stale";
  EXPECT_FALSE(read_latest(fs, dir, &warning));
  EXPECT_EQ(warning, "");  // simply none
  save_checkpoint(dir, "step=100.h5", sample_checkpoint(100));
  const std::string good = test::slurp(dir + "/latest.json");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "empty file"},
      {"{\"file\": \"step=100.h5\", \"glob", "not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {"{\"global_step\": 1}", "'file'"},
      {R"({"file": "../step=100.h5", "global_step": 1, "bytes": 1, "checksum": {"algorithm": "xxh3_64", "value": "ab"}})", "file name"},
      {R"({"file": "step=100.h5", "global_step": "x", "bytes": 1, "checksum": {"algorithm": "xxh3_64", "value": "ab"}})", "global_step"},
      {R"({"file": "step=100.h5", "global_step": 1, "bytes": 1, "checksum": {"algorithm": "md5", "value": "ab"}})", "checksum"},
      {R"({"file": "step=100.h5", "global_step": 1, "bytes": 1, "checksum": {"algorithm": "xxh3_64", "value": "xyz"}})", "checksum"},
      {R"({"file": "step=999.h5", "global_step": 1, "bytes": 1, "checksum": {"algorithm": "xxh3_64", "value": "ab"}})", "does not exist"},
  };
  for (const auto& [text, why] : cases) {
    test::spit(dir + "/latest.json", text);
    EXPECT_FALSE(read_latest(fs, dir, &warning)) << text;
    EXPECT_NE(warning.find(why), std::string::npos) << text << " -> " << warning;
  }
  test::spit(dir + "/latest.json", good);
  EXPECT_TRUE(read_latest(fs, dir, &warning));
  EXPECT_EQ(warning, "");
}

TEST(CheckpointCommit, ListNewestFirstAndRemove) {
  const std::string dir = ddp::test::temp_dir("commit-list");
  FileSystem& fs = default_file_system();
  for (int64_t step : {300, 100, 200}) {
    save_checkpoint(dir, fmt::format("step={}.h5", step), sample_checkpoint(step));
  }
  test::write_checkpoint_file(dir + "/foreign.h5", sample_checkpoint(999));  // no sidecar
  test::spit(dir + "/.step=400.h5.tmp-1", "partial");
  test::spit(dir + "/broken.h5", "x");
  test::spit(dir + "/broken.h5.sum", "{not json");
  const auto list = list_checkpoints(fs, dir);
  std::vector<std::string> names;
  for (const auto& c : list) names.push_back(c.file);
  EXPECT_EQ(names, (std::vector<std::string>{"step=300.h5", "step=200.h5", "step=100.h5",
                                             "broken.h5", "foreign.h5"}));
  EXPECT_EQ(list[0].global_step, 300);
  EXPECT_EQ(list[0].bytes, list[0].recorded_bytes);
  EXPECT_FALSE(list[3].sidecar);
  EXPECT_NE(list[3].sidecar_error.find("unreadable"), std::string::npos);
  EXPECT_FALSE(list[4].sidecar);
  EXPECT_EQ(list[4].global_step, -1);

  remove_checkpoint(fs, dir + "/step=100.h5");
  EXPECT_FALSE(fs.exists(dir + "/step=100.h5"));
  EXPECT_FALSE(fs.exists(dir + "/step=100.h5.sum"));
  EXPECT_EQ(list_checkpoints(fs, dir).size(), 4u);
}

TEST(CheckpointCommit, TemporaryNames) {
  const std::string t = temp_path_for("/ckpt/dir/step=10.h5");
  EXPECT_EQ(t.rfind("/ckpt/dir/.step=10.h5.tmp-", 0), 0u) << t;
  EXPECT_TRUE(is_temporary_name(base_name(t)));
  EXPECT_FALSE(is_temporary_name("step=10.h5"));
  EXPECT_FALSE(is_temporary_name(".hidden.h5"));
  EXPECT_EQ(parent_dir("step=10.h5"), ".");
  EXPECT_EQ(temp_path_for("x.h5").rfind(".x.h5.tmp-", 0), 0u);
}

TEST(CheckpointCommit, SidecarRejectsGarbage) {
  EXPECT_THROW(sidecar_from_json("{}", "x.sum"), Error);
  EXPECT_THROW(sidecar_from_json(R"({"bytes": -1, "algorithm": "xxh3_64", "checksum": "ab"})", "x"),
               Error);
  const Sidecar s = sidecar_from_json(
      R"({"bytes": 10, "algorithm": "xxh3_64", "checksum": "00ff", "global_step": 3})", "x");
  EXPECT_EQ(s.current.bytes, 10u);
  EXPECT_EQ(s.current.checksum, 0xffu);
  EXPECT_EQ(s.current.global_step, 3);
}

}  // namespace
}  // namespace ddp::ckpt
