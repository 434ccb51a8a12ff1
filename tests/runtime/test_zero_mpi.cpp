// ZeRO stage 1 (ddp.zero_stage=1) under mpirun at world sizes 1-4: the partition; training
// equivalent to stage 0 (SGD with momentum, Adam, AdamW, clipping, accumulation, bf16-mixed,
// 16-bit wire) with replicas bitwise identical after every step; each rank holding only its
// share of the optimizer state; a stage-1 checkpoint in stage 0's layout, resumed bitwise at
// the same world size and stage, and across stages with every rank given its own share; a
// reduce-scatter that cannot complete named in the error.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include <torch/torch.h>

#include "checkpoint/format_reader.h"
#include "collectives/error.h"
#include "runtime/checkpointer.h"
#include "runtime/config.h"
#include "runtime/ddp_engine.h"
#include "runtime/state_io.h"
#include "runtime/tensor_comm.h"
#include "runtime/trainer.h"
#include "runtime/zero_partition.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;
namespace fs = std::filesystem;

constexpr int64_t kSteps = 20;

// Odd sizes everywhere (11 features, layers of 13 and 7, 5 classes): no parameter count is a
// multiple of any world size, and the partition cannot be even.
Config make_config(const std::string& root, const std::string& name,
                   std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides{
      "trainer.default_root_dir=" + root, "trainer.name=" + name,
      "trainer.max_steps=" + std::to_string(kSteps), "trainer.max_epochs=-1",
      "trainer.batch_size=4", "trainer.progress_bar=off", "trainer.log_every_n_steps=1000",
      "trainer.check_val_every_n_epoch=0", "data.num_samples=120", "data.num_features=11",
      "data.num_classes=5", "model.hidden_sizes=[13, 7]", "model.dropout=0.0",
      "optimizer.lr=0.05", "checkpoint.every_n_epochs=0", "checkpoint.enabled=false"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config_from_string("{}", overrides);
}

std::vector<torch::Tensor> parameters_of(Trainer& t) {
  std::vector<torch::Tensor> out;
  for (const auto& p : t.model().parameters()) out.push_back(p.detach().clone());
  return out;
}

int64_t state_elements(Trainer& t) {
  int64_t n = 0;
  for (const auto& s : optimizer_sources(t.optimizer(), t.model())) {
    n += static_cast<int64_t>(s.bytes / dtype_size(s.dtype));
  }
  return n;
}

TEST(ZeroPartition, BalancedDeterministicAndComplete) {
  const std::vector<int64_t> numels{143, 13, 91, 7, 35, 5, 1000, 1, 0, 64};
  for (int world_size = 1; world_size <= 5; ++world_size) {
    const auto owner = partition_parameters(numels, world_size);
    ASSERT_EQ(owner.size(), numels.size());
    EXPECT_EQ(owner, partition_parameters(numels, world_size)) << "must be deterministic";
    for (int r : owner) {
      EXPECT_GE(r, 0);
      EXPECT_LT(r, world_size);
    }
    const auto load = owned_elements(numels, owner, world_size);
    EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}),
              std::accumulate(numels.begin(), numels.end(), int64_t{0}));
    // Greedy largest-first: no rank exceeds the lightest one by more than the largest
    // parameter placed after it, so at most by the largest parameter overall.
    const int64_t spread = *std::max_element(load.begin(), load.end()) -
                           *std::min_element(load.begin(), load.end());
    EXPECT_LE(spread, *std::max_element(numels.begin(), numels.end()));
  }
  // Many equal parameters spread evenly.
  const auto even = owned_elements(std::vector<int64_t>(12, 10),
                                   partition_parameters(std::vector<int64_t>(12, 10), 4), 4);
  EXPECT_EQ(even, (std::vector<int64_t>{30, 30, 30, 30}));
  EXPECT_THROW(partition_parameters(numels, 0), Error);
}

struct Case {
  std::string name;
  std::vector<std::string> overrides;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ZeroMatchesStageZero : public ::testing::TestWithParam<Case> {};

TEST_P(ZeroMatchesStageZero, SameParametersReplicasIdenticalStateSharded) {
  auto& comm = world();
  const std::string root = test::temp_dir("zero_equiv");
  auto extra = GetParam().overrides;
  Trainer stage0(make_config(root, "s0", extra), comm);
  stage0.fit();
  extra.push_back("ddp.zero_stage=1");
  Trainer stage1(make_config(root, "s1", extra), comm);
  stage1.fit();
  ASSERT_EQ(stage1.state().global_step, kSteps);

  const auto a = parameters_of(stage0);
  const auto b = parameters_of(stage1);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(1.0, a[i].abs().max().item<double>());
    EXPECT_LE((a[i] - b[i]).abs().max().item<double>(), 2e-5 * scale) << "parameter " << i;
  }
  EXPECT_TRUE(ranks_differing_from_root(comm, stage1.engine().state_hash()).empty())
      << "stage-1 replicas must be bitwise identical";

  // Each rank holds the state of the parameters it owns, and only those.
  const auto& owners = stage1.engine().owners();
  std::vector<int64_t> numels;
  for (const auto& p : stage1.model().parameters()) numels.push_back(p.numel());
  const auto owned = owned_elements(numels, owners, comm.size());
  const int64_t full = state_elements(stage0);
  const int64_t mine = state_elements(stage1);
  const int64_t total_params = std::accumulate(numels.begin(), numels.end(), int64_t{0});
  const int64_t per_param = full / total_params;  // state elements per parameter element
  ASSERT_GE(per_param, 1) << "the optimizer keeps state here";
  EXPECT_GE(mine, owned[static_cast<size_t>(comm.rank())] * per_param);
  EXPECT_LE(mine, owned[static_cast<size_t>(comm.rank())] * per_param + 64)  // Adam's steps
      << "rank " << comm.rank() << " holds state it does not own";
  int64_t sum = mine;
  comm.all_reduce(&sum, 1, DType::kInt64, ReduceOp::kSum);
  EXPECT_EQ(sum, full) << "the shares together are exactly stage 0's state";
}

INSTANTIATE_TEST_SUITE_P(
    Optimizers, ZeroMatchesStageZero,
    ::testing::Values(
        Case{"sgd_momentum", {"optimizer.name=sgd", "optimizer.momentum=0.9"}},
        Case{"adam", {"optimizer.name=adam", "optimizer.lr=0.01"}},
        Case{"adamw_clip", {"optimizer.name=adamw", "optimizer.lr=0.01",
                            "optimizer.weight_decay=0.1", "trainer.gradient_clip_val=0.05"}},
        Case{"sgd_clip_accumulate", {"optimizer.name=sgd", "optimizer.momentum=0.9",
                                     "trainer.gradient_clip_val=0.1",
                                     "trainer.accumulate_grad_batches=3"}},
        Case{"adam_bf16_mixed_cosine", {"optimizer.name=adam", "optimizer.lr=0.01",
                                        "trainer.precision=bf16-mixed", "scheduler.name=cosine",
                                        "scheduler.warmup_steps=3"}},
        Case{"adamw_bf16_wire", {"optimizer.name=adamw", "optimizer.lr=0.01",
                                 "ddp.compression=bf16", "ddp.bucket_cap_mb=0.001"}}),
    [](const auto& info) { return info.param.name; });

// The engine alone, step by step: after every step all replicas hold the same bits, and the
// owned gradients are stage 0's all-reduced ones.
TEST(ZeroEngine, ReplicasBitwiseIdenticalAfterEveryStep) {
  auto& comm = world();
  torch::manual_seed(3);
  auto make = [] {
    return torch::nn::Sequential(torch::nn::Linear(11, 13), torch::nn::ReLU(),
                                 torch::nn::Linear(13, 7), torch::nn::ReLU(),
                                 torch::nn::Linear(7, 5));
  };
  auto copy_weights = [](torch::nn::Sequential& from, torch::nn::Sequential& to) {
    torch::NoGradGuard no_grad;  // keep the replicated copy on the same weights
    auto src = from->parameters();
    auto dst = to->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  };
  auto sharded_model = make();
  auto replicated_model = make();
  DdpOptions options;
  options.bucket_cap_mb = 0.0005;  // several buckets, each with several owners
  options.shard_optimizer = true;
  DdpEngine sharded(sharded_model.ptr(), comm, comm, options);
  options.shard_optimizer = false;
  DdpEngine replicated(replicated_model.ptr(), comm, comm, options);
  copy_weights(sharded_model, replicated_model);
  ASSERT_GT(sharded.bucket_count(), 1);
  torch::optim::Adam opt(sharded.owned_parameters(), torch::optim::AdamOptions(0.01));
  for (int step = 0; step < 12; ++step) {
    torch::manual_seed(100 + step * 7 + comm.rank());  // each rank its own batch
    const auto x = torch::randn({6, 11});
    const auto y = torch::randn({6, 5});
    for (auto* engine : {&sharded, &replicated}) {
      auto& model = engine == &sharded ? sharded_model : replicated_model;
      engine->zero_grad();
      engine->prepare_backward(true);
      torch::mse_loss(model->forward(x), y).backward();
      engine->finish_backward();
    }
    const auto owned = sharded.owned_parameters();
    std::vector<torch::Tensor> reference;
    for (const auto& p : replicated_model->parameters()) reference.push_back(p.grad());
    size_t k = 0;
    for (const auto& p : sharded_model->parameters()) {
      if (sharded.owners()[k] == comm.rank()) {
        EXPECT_TRUE(torch::allclose(p.grad(), reference[k], 1e-5, 1e-7))
            << "owned gradient " << k << " at step " << step << " is not the mean";
      }
      ++k;
    }
    opt.step();
    sharded.gather_parameters();
    copy_weights(sharded_model, replicated_model);
    ASSERT_TRUE(ranks_differing_from_root(comm, sharded.state_hash()).empty())
        << "replicas differ after step " << step;
  }
}

// Stop mid-run and resume at the same world size and stage: bitwise the uninterrupted run.
TEST(ZeroResume, SameWorldSizeAndStageIsBitwiseExact) {
  auto& comm = world();
  const std::string root = test::temp_dir("zero_exact");
  for (const std::string async : {"false", "true"}) {
    const std::vector<std::string> extra{
        "ddp.zero_stage=1", "optimizer.name=adamw", "optimizer.lr=0.01", "model.dropout=0.2",
        "checkpoint.enabled=true", "checkpoint.async=" + async};
    Trainer straight(make_config(root, "straight" + async, extra), comm);
    straight.fit();
    {
      Trainer first(make_config(root, "job" + async, extra), comm);
      first.stop_after_step(7);
      first.fit();
    }
    auto resumed_extra = extra;
    resumed_extra.push_back("checkpoint.resume=auto");
    Trainer resumed(make_config(root, "job" + async, resumed_extra), comm);
    ASSERT_EQ(resumed.state().global_step, 7);
    resumed.fit();
    const auto a = parameters_of(straight);
    const auto b = parameters_of(resumed);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i << " (async " << async << ")";
    }
    // This rank's optimizer share, bitwise.
    auto sa = optimizer_sources(straight.optimizer(), straight.model());
    auto sb = optimizer_sources(resumed.optimizer(), resumed.model());
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      std::vector<uint8_t> x(sa[i].bytes), y(sb[i].bytes);
      sa[i].copy_to(x.data());
      sb[i].copy_to(y.data());
      EXPECT_EQ(x, y) << sa[i].path;
    }
  }
}

// The file a stage-1 run writes has stage 0's datasets, and a resume in the other stage loads
// exactly the saved optimizer state into whichever rank owns each parameter now.
TEST(ZeroResume, AcrossStagesEveryRankGetsItsShare) {
  auto& comm = world();
  const std::string root = test::temp_dir("zero_cross");
  const std::vector<std::string> common{"optimizer.name=adam", "optimizer.lr=0.01",
                                        "checkpoint.enabled=true"};
  for (const int saved_stage : {1, 0}) {
    const std::string name = "saved" + std::to_string(saved_stage);
    auto extra = common;
    extra.push_back("ddp.zero_stage=" + std::to_string(saved_stage));
    std::string file;
    {
      Trainer t(make_config(root, name, extra), comm);
      t.stop_after_step(9);
      t.fit();
      file = fs::path(t.checkpointer()->dirpath()) / "last.h5";
    }
    const ckpt::Checkpoint saved = ckpt::read_checkpoint(file);
    int optimizer_tensors = 0;
    for (const auto& e : saved.tensors) optimizer_tensors += e.path.rfind("optimizer/", 0) == 0;
    EXPECT_EQ(optimizer_tensors, 6 * 3) << "six parameters, Adam's step, exp_avg, exp_avg_sq";

    auto other = common;
    other.push_back("ddp.zero_stage=" + std::to_string(1 - saved_stage));
    other.push_back("checkpoint.resume=" + file);
    Trainer resumed(make_config(root, name + "_other", other), comm);
    ASSERT_EQ(resumed.state().global_step, 9);
    std::map<std::string, const ckpt::TensorEntry*> by_path;
    for (const auto& e : saved.tensors) by_path[e.path] = &e;
    const auto mine = optimizer_sources(resumed.optimizer(), resumed.model());
    int expected = 0;
    for (int owner : resumed.engine().owners()) expected += owner == comm.rank() ? 3 : 0;
    EXPECT_EQ(static_cast<int>(mine.size()), expected);
    for (const auto& s : mine) {
      ASSERT_TRUE(by_path.count(s.path)) << s.path;
      std::vector<uint8_t> bytes(s.bytes);
      s.copy_to(bytes.data());
      EXPECT_EQ(bytes, by_path[s.path]->data) << s.path << " was not restored exactly";
    }
    resumed.fit();
    EXPECT_TRUE(ranks_differing_from_root(comm, resumed.engine().state_hash()).empty());
  }
}

// A peer that never joins the reduce-scatter: the waiting ranks fail with the call named.
TEST(ZeroEngine, StalledReduceScatterIsNamed) {
  auto& comm = world();
  if (comm.size() < 2) GTEST_SKIP() << "needs a peer";
  CommunicatorOptions short_wait;
  short_wait.timeout_s = 1.0;
  MpiCommunicator grad(short_wait, comm.mpi_comm());
  auto model = std::make_shared<torch::nn::Module>();
  auto lin = model->register_module("l", torch::nn::Linear(5, 3));
  DdpOptions options;
  options.shard_optimizer = true;
  DdpEngine engine(model, grad, comm, options);
  auto backward = [&] {
    engine.zero_grad();
    engine.prepare_backward(true);
    lin->forward(torch::ones({2, 5})).sum().backward();
    engine.finish_backward();
  };
  if (comm.rank() == 0) {
    std::string message;
    try {
      backward();
    } catch (const Error& e) {
      message = e.what();
    }
    EXPECT_NE(message.find("MPI_Ireduce_scatter"), std::string::npos) << message;
    EXPECT_NE(message.find("did not complete"), std::string::npos) << message;
  }
  comm.barrier();
  // The late ranks join now, so the collective rank 0 abandoned completes and nothing is left
  // pending at MPI_Finalize. (From here on this process destroys an unfinished collective
  // without waiting for it, as a job that is ending does; no later test leaves one.)
  if (comm.rank() != 0) backward();
  comm.barrier();
}

}  // namespace
}  // namespace ddp
