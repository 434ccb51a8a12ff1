// ddp-train as users run it (mpirun -np 2): bad input stops all ranks together with one
// readable message naming the key/file/rank and the documented exit code; never a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "collectives/error.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::run_command;

std::string mpirun(int np, const std::string& args) {
  return "OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np " +
         std::to_string(np) + " " + test::bin_path("ddp-train") + " " + args;
}

// Small and quick: few steps, no validation, output under a temp dir.
std::string quick(const std::string& dir) {
  return "--set trainer.max_steps=3 --set trainer.check_val_every_n_epoch=0 "
         "--set data.num_samples=512 --set trainer.progress_bar=off "
         "--set trainer.default_root_dir=" + dir;
}

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1))
    ++n;
  return n;
}

struct BadInput {
  const char* name;
  std::string args;
  int exit_code;
  std::vector<std::string> expected;  // substrings of the one error message
};

class CliBadInput : public ::testing::TestWithParam<BadInput> {};

TEST_P(CliBadInput, AllRanksStopWithOneMessage) {
  const BadInput& c = GetParam();
  const std::string dir = test::temp_dir(c.name);
  const auto r = run_command(mpirun(2, quick(dir) + " " + c.args), 120);
  EXPECT_EQ(r.exit_code, c.exit_code) << r.output;
  EXPECT_EQ(count(r.output, "ddp-train: error"), 1u) << "exactly one message expected:\n"
                                                     << r.output;
  for (const auto& s : c.expected) EXPECT_NE(r.output.find(s), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Segmentation"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CliBadInput,
    ::testing::Values(
        BadInput{"unknown_key", "--set trainer.max_step=5", kExitInvalidInput,
                 {"trainer.max_step", "did you mean 'trainer.max_steps'"}},
        BadInput{"wrong_type", "--set trainer.batch_size=abc", kExitInvalidInput,
                 {"trainer.batch_size", "abc"}},
        BadInput{"out_of_range", "--set optimizer.lr=-1", kExitInvalidInput, {"optimizer.lr"}},
        BadInput{"bad_choice", "--set optimizer.name=lion", kExitInvalidInput,
                 {"optimizer.name", "lion"}},
        BadInput{"missing_config", "--config /nonexistent/run.yaml", kExitInvalidInput,
                 {"/nonexistent/run.yaml"}},
        BadInput{"missing_data_file", "--set data.name=csv --set data.path=/nonexistent/d.csv",
                 kExitInvalidInput, {"/nonexistent/d.csv"}},
        BadInput{"batch_larger_than_shard", "--set trainer.batch_size=100000",
                 kExitInvalidInput, {"trainer.batch_size=100000", "shard"}},
        BadInput{"gpu_without_gpu", "--set model.device=cuda", kExitInvalidInput,
                 {"model.device=cuda", "GPU"}},
        BadInput{"unknown_model", "--set model.name=resnet", kExitInvalidInput, {"resnet"}}),
    [](const ::testing::TestParamInfo<BadInput>& info) { return std::string(info.param.name); });

TEST(Cli, UnknownKeyInConfigFileIsNamed) {
  const std::string dir = test::temp_dir("cfgfile");
  const std::string cfg = dir + "/bad.yaml";
  std::ofstream(cfg) << "trainer:\n  max_steps: 3\nmodel:\n  hiden_sizes: [8]\n";
  const auto r = run_command(mpirun(2, "--config " + cfg + " " + quick(dir)), 120);
  EXPECT_EQ(r.exit_code, kExitInvalidInput) << r.output;
  EXPECT_NE(r.output.find("model.hiden_sizes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("did you mean 'model.hidden_sizes'"), std::string::npos) << r.output;
}

TEST(Cli, BadFlagIsRejected) {
  const auto r = run_command(mpirun(2, "--bogus"), 60);
  EXPECT_EQ(r.exit_code, kExitInvalidInput) << r.output;
  EXPECT_NE(r.output.find("bogus"), std::string::npos) << r.output;
}

TEST(Cli, ModelsThatDifferAcrossRanksStopEveryRank) {
  const std::string dir = test::temp_dir("mismatch");
  const std::string bin = test::bin_path("ddp-train");
  const std::string cmd =
      "OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 1 " +
      bin + " " + quick(dir) + " --set model.hidden_sizes=[16] : -np 1 " + bin + " " +
      quick(dir) + " --set model.hidden_sizes=[17]";
  const auto r = run_command(cmd, 120);
  EXPECT_EQ(r.exit_code, kExitDistributed) << r.output;
  EXPECT_NE(r.output.find("rank(s) 1 differs from rank 0"), std::string::npos) << r.output;
  EXPECT_EQ(count(r.output, "ddp-train: error"), 1u) << r.output;
}

TEST(Cli, SuccessfulRunWritesSummaryAndMetrics) {
  const std::string dir = test::temp_dir("ok");
  const auto r = run_command(mpirun(2, quick(dir) + " --set trainer.max_steps=8 "
                                         "--set trainer.check_val_every_n_epoch=1 "
                                         "--set trainer.val_check_interval=4 "
                                         "--set trainer.log_every_n_steps=2 --summary " +
                                         dir + "/summary.json"),
                             120);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(dir + "/summary.json");
  ASSERT_TRUE(in.good());
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["steps"], 8);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_GT(j["samples_per_s"].get<double>(), 0.0);
  EXPECT_TRUE(j["final_val_loss"].is_number());
  EXPECT_EQ(j["samples"], 8 * 64 * 2);
  std::ifstream csv(dir + "/default/metrics.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header, "epoch,step,train_loss,val_loss,lr,samples_per_s");
  int rows = 0;
  for (std::string line; std::getline(csv, line);) ++rows;
  EXPECT_EQ(rows, 4);  // steps 2, 4, 6, 8
}

TEST(Cli, StalledRankMakesTheOthersFailWithTheTimeoutMessage) {
  const std::string dir = test::temp_dir("stall");
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_command("DDP_FAULT_STALL=1:5:60 " +
                                 mpirun(2, quick(dir) + " --set trainer.max_steps=20 "
                                                        "--set ddp.timeout_s=2"),
                             120);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, kExitDistributed) << r.output;
  EXPECT_NE(r.output.find("did not complete within 2 s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 5"), std::string::npos) << r.output;
  EXPECT_LT(secs, 30.0) << "the job must end soon after ddp.timeout_s, not after the stall";
}

// ZeRO-1's two collectives: a rank that never joins ends the job with the collective named.
TEST(Cli, StalledRankUnderZeroNamesTheReduceScatter) {
  const std::string dir = test::temp_dir("stall_zero_rs");
  const auto r = run_command("DDP_FAULT_STALL=1:5:60 " +
                                 mpirun(2, quick(dir) + " --set trainer.max_steps=20 "
                                                        "--set ddp.timeout_s=2 "
                                                        "--set ddp.zero_stage=1"),
                             120);
  EXPECT_EQ(r.exit_code, kExitDistributed) << r.output;
  EXPECT_NE(r.output.find("gradient reduce-scatter of step 5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("MPI_Ireduce_scatter"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("did not complete within 2 s"), std::string::npos) << r.output;
}

TEST(Cli, StalledRankUnderZeroNamesTheAllGather) {
  const std::string dir = test::temp_dir("stall_zero_ag");
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_command("DDP_FAULT_PAUSE=gather:1:60:5 " +
                                 mpirun(2, quick(dir) + " --set trainer.max_steps=20 "
                                                        "--set ddp.timeout_s=2 "
                                                        "--set ddp.zero_stage=1"),
                             120);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, kExitDistributed) << r.output;
  EXPECT_NE(r.output.find("MPI_Allgatherv did not complete within"), std::string::npos)
      << r.output;
  EXPECT_LT(secs, 30.0) << "the job must end soon after ddp.timeout_s, not after the stall";
}

TEST(Cli, RunsWithoutMpirun) {
  const std::string dir = test::temp_dir("singleton");
  const auto r = run_command("OMP_NUM_THREADS=1 " + test::bin_path("ddp-train") + " " + quick(dir), 120);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1 ranks"), std::string::npos) << r.output;
}


// A checkpoint from a newer ddp-runtime (here: a sidecar naming a checksum algorithm this build
// does not know) is neither "corrupt" nor skipped: verify and resume stop with exit 5, saying
// to upgrade, and the file is left alone.
TEST(Cli, ACheckpointFromANewerVersionIsNamedAndNotSkipped) {
  const std::string dir = test::temp_dir("newer");
  const std::string ckpt = dir + "/ckpt";
  auto r = run_command(mpirun(1, quick(dir) + " --set checkpoint.dirpath=" + ckpt), 120);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sidecar = ckpt + "/last.h5.sum";
  std::ifstream in(sidecar);
  ASSERT_TRUE(in.good()) << sidecar;
  nlohmann::json j = nlohmann::json::parse(in);
  in.close();
  j["algorithm"] = "xxh4_128";
  std::ofstream(sidecar) << j.dump();
  r = run_command(test::bin_path("ddp-checkpoint") + " verify " + ckpt + "/last.h5", 60);
  EXPECT_EQ(r.exit_code, kExitNewerVersion) << r.output;
  EXPECT_NE(r.output.find("written by a newer ddp-runtime"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("corrupt"), std::string::npos) << r.output;
  r = run_command(mpirun(1, quick(dir) + " --set checkpoint.dirpath=" + ckpt +
                                " --set trainer.max_steps=6 --resume " + ckpt + "/last.h5"),
                  120);
  EXPECT_EQ(r.exit_code, kExitNewerVersion) << r.output;
  EXPECT_NE(r.output.find("upgrade ddp-runtime"), std::string::npos) << r.output;
  EXPECT_EQ(count(r.output, "error:"), 1u) << r.output;
}

}  // namespace
}  // namespace ddp
