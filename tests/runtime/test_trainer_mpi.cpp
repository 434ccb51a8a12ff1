// The whole Trainer (sampler + DDP engine + optimizer + schedule) under mpirun: W ranks with
// batch B end with the same parameters as one rank (a communicator over MPI_COMM_SELF) with
// batch W*B, and every replica ends bitwise identical.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "collectives/agreement.h"
#include "runtime/config.h"
#include "runtime/ddp_engine.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;

Config base_config(const std::string& dir, const std::string& optimizer, int64_t batch,
                   int64_t accumulate) {
  Config c = load_config_from_string(
      "trainer: {max_steps: 24, max_epochs: -1, check_val_every_n_epoch: 0, "
      "progress_bar: 'off', log_every_n_steps: 1000}\n"
      "data: {num_samples: 480, num_features: 10, num_classes: 4}\n"
      "model: {hidden_sizes: [16, 16]}\n"
      "scheduler: {name: cosine, warmup_steps: 3}\n",
      {"optimizer.name=" + optimizer, "trainer.batch_size=" + std::to_string(batch),
       "trainer.accumulate_grad_batches=" + std::to_string(accumulate),
       "trainer.default_root_dir=" + dir, "optimizer.lr=0.01"});
  return c;
}

class TrainerEquivalence
    : public ::testing::TestWithParam<std::tuple<std::string, int64_t /*accumulate*/>> {};

TEST_P(TrainerEquivalence, WRanksTimesBMatchesOneRankTimesWB) {
  const auto [optimizer, accumulate] = GetParam();
  auto& comm = world();
  const int W = comm.size();
  const std::string dir = test::temp_dir("trainer_eq");
  constexpr int64_t kB = 4;

  Config dist_cfg = base_config(dir, optimizer, kB, accumulate);
  dist_cfg.trainer.name = "dist";
  Trainer dist(dist_cfg, comm);
  dist.fit();

  MpiCommunicator self(CommunicatorOptions{60.0}, MPI_COMM_SELF);
  Config single_cfg = base_config(dir, optimizer, kB * W, accumulate);
  single_cfg.trainer.name = "single_rank" + std::to_string(comm.rank());
  Trainer single(single_cfg, self);
  single.fit();

  ASSERT_EQ(dist.state().global_step, single.state().global_step);
  ASSERT_EQ(dist.state().epoch, single.state().epoch);
  // 480 samples / (W*4) per step: 24 steps cross at least one epoch boundary for W <= 4.
  auto ref = single.model().named_parameters();
  for (const auto& item : dist.model().named_parameters()) {
    const double diff = (item.value() - ref[item.key()]).abs().max().item<double>();
    EXPECT_LT(diff, 5e-5) << item.key();
  }
  const uint64_t h = dist.engine().state_hash();
  std::vector<uint64_t> all(W);
  comm.all_gather(&h, all.data(), 1, DType::kInt64);
  for (int r = 0; r < W; ++r) EXPECT_EQ(all[r], all[0]) << "rank " << r << " diverged";
}

INSTANTIATE_TEST_SUITE_P(Optimizers, TrainerEquivalence,
                         ::testing::Values(std::make_tuple(std::string("sgd"), int64_t{1}),
                                           std::make_tuple(std::string("adam"), int64_t{1}),
                                           std::make_tuple(std::string("adamw"), int64_t{2})));

TEST(Trainer, LossGoesDownOnTheDefaultTask) {
  auto& comm = world();
  const std::string dir = test::temp_dir("trainer_learns");
  Config c = load_config_from_string(
      "trainer: {max_steps: 60, progress_bar: 'off', check_val_every_n_epoch: 0}\n"
      "data: {num_samples: 4096}\n",
      {"trainer.default_root_dir=" + dir});
  Trainer t(c, comm);
  const double before = t.validate();
  const TrainResult r = t.fit();
  const double after = t.validate();
  EXPECT_EQ(r.steps, 60);
  EXPECT_LT(after, 0.8 * before) << "validation loss did not improve";
  EXPECT_EQ(r.world_size, comm.size());
}

TEST(Trainer, Bf16MixedLearnsWithFloat32MasterWeightsOnEveryRank) {
  auto& comm = world();
  const std::string dir = test::temp_dir("trainer_bf16");
  Config c = load_config_from_string(
      "trainer: {max_steps: 60, progress_bar: 'off', check_val_every_n_epoch: 0, "
      "precision: bf16-mixed}\n"
      "data: {num_samples: 4096}\n",
      {"trainer.default_root_dir=" + dir});
  Trainer t(c, comm);
  ASSERT_EQ(t.precision(), Precision::kBf16Mixed);
  EXPECT_EQ(t.grad_scaler(), nullptr) << "bf16 needs no loss scaling";
  const double before = t.validate();
  const TrainResult r = t.fit();
  const double after = t.validate();
  EXPECT_EQ(r.steps, 60);
  EXPECT_LT(after, 0.8 * before) << "validation loss did not improve under bf16 autocast";
  for (const auto& p : t.model().parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  for (const auto& p : t.model().parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
  }
  // The forward really ran in bf16: the result differs from a float32 run's.
  Config c32 = c;
  c32.trainer.precision = "32";
  c32.trainer.name = "fp32";
  Trainer t32(c32, comm);
  t32.fit();
  double diff = 0;
  auto ref = t32.model().named_parameters();
  for (const auto& item : t.model().named_parameters()) {
    diff = std::max(diff, (item.value() - ref[item.key()]).abs().max().item<double>());
  }
  EXPECT_GT(diff, 0.0) << "bf16-mixed gave bitwise the float32 result: autocast was off";
  const uint64_t h = t.engine().state_hash();
  std::vector<uint64_t> all(comm.size());
  comm.all_gather(&h, all.data(), 1, DType::kInt64);
  for (int r2 = 0; r2 < comm.size(); ++r2) EXPECT_EQ(all[r2], all[0]) << "rank " << r2;
}

TEST(Trainer, Fp16MixedOnCpuIsRefusedWithTheFix) {
  auto& comm = world();
  const std::string dir = test::temp_dir("trainer_fp16_cpu");
  Config c = load_config_from_string("trainer: {precision: 16-mixed, progress_bar: 'off'}\n",
                                     {"trainer.default_root_dir=" + dir});
  try {
    Trainer t(c, comm);
    ADD_FAILURE() << "16-mixed on CPU was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("bf16-mixed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ddp
