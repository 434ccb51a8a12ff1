// DdpEngine under mpirun: W ranks x batch B must follow the trajectory of 1 rank x batch W*B
// (same global batches, averaged gradients), for several bucket layouts, with SGD and Adam,
// with gradient accumulation; buckets must be launched while backward is still running.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/ddp_engine.h"
#include "runtime/models/model.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;

constexpr int64_t kFeatures = 12;
constexpr int64_t kClasses = 5;
constexpr int64_t kBatch = 4;  // per rank
constexpr int kSteps = 20;

std::shared_ptr<Model> make_mlp(std::vector<int64_t> hidden = {32, 24, 16}) {
  torch::manual_seed(1234);
  ModelConfig mc;
  mc.name = "mlp";
  mc.hidden_sizes = std::move(hidden);
  DatasetInfo info;
  info.task = Task::kClassification;
  info.input_shape = {kFeatures};
  info.num_outputs = kClasses;
  return ModelRegistry::global().create(mc, info);
}

std::unique_ptr<torch::optim::Optimizer> make_opt(const std::string& name, Model& m) {
  if (name == "sgd") {
    return std::make_unique<torch::optim::SGD>(m.parameters(),
                                               torch::optim::SGDOptions(0.1).momentum(0.9));
  }
  return std::make_unique<torch::optim::Adam>(m.parameters(), torch::optim::AdamOptions(1e-2));
}

// Global data for all steps, identical on every rank.
struct Data {
  torch::Tensor x, y;
};
Data make_data(int world_size, int micro) {
  auto gen = at::detail::createCPUGenerator(99);
  const int64_t n = kSteps * world_size * kBatch * micro;
  return {torch::randn({n, kFeatures}, gen), torch::randint(0, kClasses, {n}, gen)};
}

struct Case {
  std::string optimizer;
  double bucket_cap_mb;
  int micro;  // gradient accumulation micro-batches per step
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto& c = info.param;
  std::string cap = c.bucket_cap_mb == 0      ? "one_param_per_bucket"
                    : c.bucket_cap_mb < 0.001 ? "cap_below_one_param"
                    : c.bucket_cap_mb < 1     ? "mixed_buckets"
                                              : "whole_model";
  return c.optimizer + "_" + cap + "_accum" + std::to_string(c.micro);
}

class DdpEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(DdpEquivalence, MatchesSingleProcessOnTheGlobalBatch) {
  const Case tc = GetParam();
  auto& comm = world();
  const int W = comm.size();
  const Data data = make_data(W, tc.micro);
  const int64_t global = W * kBatch * tc.micro;

  // Reference: one process, batch W*B*micro, plain autograd.
  auto ref = make_mlp();
  auto ref_opt = make_opt(tc.optimizer, *ref);
  for (int s = 0; s < kSteps; ++s) {
    ref_opt->zero_grad();
    auto xb = data.x.narrow(0, s * global, global);
    auto yb = data.y.narrow(0, s * global, global);
    compute_loss(Task::kClassification, ref->forward(xb), yb).backward();
    ref_opt->step();
  }

  // DDP: rank r, micro-batch m of step s takes rows [s*global + (m*W + r)*B, +B).
  auto model = make_mlp();
  DdpOptions opts;
  opts.bucket_cap_mb = tc.bucket_cap_mb;
  DdpEngine engine(model, comm, comm, opts);
  auto opt = make_opt(tc.optimizer, *model);
  for (int s = 0; s < kSteps; ++s) {
    engine.zero_grad();
    for (int m = 0; m < tc.micro; ++m) {
      const int64_t begin = s * global + (m * W + comm.rank()) * kBatch;
      auto loss = compute_loss(Task::kClassification,
                               model->forward(data.x.narrow(0, begin, kBatch)),
                               data.y.narrow(0, begin, kBatch)) /
                  static_cast<double>(tc.micro);
      engine.prepare_backward(m == tc.micro - 1);
      loss.backward();
    }
    engine.finish_backward();
    opt->step();
  }

  auto p_ref = ref->named_parameters();
  for (const auto& item : model->named_parameters()) {
    const auto diff = (item.value() - p_ref[item.key()]).abs().max().item<double>();
    EXPECT_LT(diff, 2e-5) << item.key() << " differs from the single-process run";
  }
  // All replicas are bitwise identical.
  const uint64_t h = engine.state_hash();
  std::vector<uint64_t> all(W);
  comm.all_gather(&h, all.data(), 1, DType::kInt64);
  for (int r = 0; r < W; ++r) EXPECT_EQ(all[r], all[0]) << "rank " << r << " diverged";
}

INSTANTIATE_TEST_SUITE_P(
    Buckets, DdpEquivalence,
    ::testing::Values(Case{"sgd", 0.0, 1},     // exactly one parameter per bucket
                      Case{"sgd", 1e-5, 1},    // cap smaller than any parameter
                      Case{"sgd", 0.0016, 1},  // small tensors share, large ones alone
                      Case{"sgd", 100.0, 1},   // one bucket for the whole model
                      Case{"adam", 1e-5, 1}, Case{"adam", 100.0, 1}, Case{"sgd", 0.0016, 2},
                      Case{"adam", 1e-5, 3}),
    case_name);

TEST(DdpEngine, BucketsLaunchBeforeBackwardEnds) {
  auto& comm = world();
  auto model = make_mlp({64, 64, 64, 64});
  const int64_t n_params = static_cast<int64_t>(model->parameters().size());
  auto x = torch::randn({kBatch, kFeatures});
  auto y = torch::randint(0, kClasses, {kBatch});

  DdpOptions opts;
  opts.bucket_cap_mb = 0.01;  // several buckets
  DdpEngine engine(model, comm, comm, opts);
  ASSERT_GT(engine.bucket_count(), 2);
  engine.zero_grad();
  engine.prepare_backward(true);
  compute_loss(Task::kClassification, model->forward(x), y).backward();
  const DdpStats during = engine.stats();
  engine.finish_backward();
  // The first bucket went out when only some gradients were ready...
  EXPECT_GE(during.hooks_fired_at_first_launch, 1);
  EXPECT_LT(during.hooks_fired_at_first_launch, n_params);
  // ...and every bucket was launched from a hook, i.e. during backward.
  EXPECT_EQ(during.buckets_launched_in_backward, engine.bucket_count());
  EXPECT_EQ(during.hooks_fired, n_params);

  // Control: with overlap off nothing is launched during backward.
  auto model2 = make_mlp({64, 64, 64, 64});
  opts.overlap = false;
  DdpEngine late(model2, comm, comm, opts);
  late.zero_grad();
  late.prepare_backward(true);
  compute_loss(Task::kClassification, model2->forward(x), y).backward();
  EXPECT_EQ(late.stats().buckets_launched_in_backward, 0);
  late.finish_backward();
}

TEST(DdpEngine, NoCommunicationOnAccumulationMicroBatches) {
  auto& comm = world();
  auto model = make_mlp();
  DdpEngine engine(model, comm, comm, DdpOptions{});
  engine.zero_grad();
  engine.prepare_backward(false);
  auto x = torch::randn({kBatch, kFeatures});
  compute_loss(Task::kClassification, model->forward(x), torch::zeros({kBatch}, torch::kLong))
      .backward();
  EXPECT_EQ(engine.stats().hooks_fired, 0);
  EXPECT_EQ(engine.stats().buckets_launched_in_backward, 0);
  EXPECT_THROW(engine.finish_backward(), Error);  // no synced backward happened
}

TEST(DdpEngine, BroadcastsRankZeroWeightsAtStart) {
  auto& comm = world();
  torch::manual_seed(100 + comm.rank());  // deliberately different initial weights
  ModelConfig mc;
  mc.hidden_sizes = {8};
  DatasetInfo info{Task::kClassification, {kFeatures}, kClasses};
  auto model = ModelRegistry::global().create(mc, info);
  DdpEngine engine(model, comm, comm, DdpOptions{});
  auto w = model->named_parameters()["layers.0.weight"].clone();
  comm.broadcast(w.data_ptr(), w.numel(), DType::kFloat32, 0);
  EXPECT_TRUE(torch::equal(w, model->named_parameters()["layers.0.weight"]));
}

TEST(DdpEngine, ArchitectureMismatchFailsOnEveryRank) {
  auto& comm = world();
  if (comm.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  ModelConfig mc;
  mc.hidden_sizes = {comm.rank() == 1 ? int64_t{9} : int64_t{8}};
  DatasetInfo info{Task::kClassification, {kFeatures}, kClasses};
  auto model = ModelRegistry::global().create(mc, info);
  try {
    DdpEngine engine(model, comm, comm, DdpOptions{});
    FAIL() << "expected a mismatch error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kMismatch);
    EXPECT_NE(std::string(e.what()).find("rank(s) 1"), std::string::npos) << e.what();
  }
}

TEST(DdpEngine, CompressedAllReduceKeepsReplicasIdentical) {
  auto& comm = world();
  for (auto wire : {torch::kBFloat16, torch::kFloat16}) {
    auto model = make_mlp();
    DdpOptions opts;
    opts.wire_dtype = wire;
    DdpEngine engine(model, comm, comm, opts);
    torch::optim::SGD opt(model->parameters(), 0.1);
    torch::manual_seed(7 + comm.rank());
    for (int s = 0; s < 5; ++s) {
      engine.zero_grad();
      engine.prepare_backward(true);
      compute_loss(Task::kClassification, model->forward(torch::randn({kBatch, kFeatures})),
                   torch::randint(0, kClasses, {kBatch}))
          .backward();
      engine.finish_backward();
      opt.step();
    }
    const uint64_t h = engine.state_hash();
    std::vector<uint64_t> all(comm.size());
    comm.all_gather(&h, all.data(), 1, DType::kInt64);
    for (int r = 0; r < comm.size(); ++r) EXPECT_EQ(all[r], all[0]);
  }
}

}  // namespace
}  // namespace ddp
