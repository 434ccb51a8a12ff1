// Mixed precision pieces on CPU: the loss scaler's arithmetic and state (the part of
// 16-mixed that does not need a GPU), its place in the checkpoint file, and bf16 autocast.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "checkpoint/format_reader.h"
#include "checkpoint/format_writer.h"
#include "collectives/error.h"
#include "runtime/mixed_precision.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

std::vector<torch::Tensor> params_with_grads(std::vector<float> grads) {
  std::vector<torch::Tensor> out;
  for (float g : grads) {
    auto p = torch::zeros({3}, torch::requires_grad());
    p.mutable_grad() = torch::full({3}, g);
    out.push_back(p);
  }
  out.push_back(torch::zeros({2}, torch::requires_grad()));  // no gradient: skipped
  return out;
}

TEST(GradScaler, ScalesTheLossAndUnscalesGradients) {
  GradScaler s;
  EXPECT_DOUBLE_EQ(s.current_scale(), 65536.0);
  EXPECT_DOUBLE_EQ(s.scale(torch::tensor(2.0)).item<double>(), 131072.0);
  auto params = params_with_grads({65536.0f, -131072.0f});
  EXPECT_FALSE(s.unscale(params));
  EXPECT_TRUE(torch::allclose(params[0].grad(), torch::ones({3})));
  EXPECT_TRUE(torch::allclose(params[1].grad(), torch::full({3}, -2.0)));
}

TEST(GradScaler, InfOrNanAnywhereSkipsAndBacksOff) {
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    GradScaler s;
    auto params = params_with_grads({1.0f, 1.0f});
    params[1].mutable_grad()[2] = bad;
    EXPECT_TRUE(s.unscale(params)) << bad;
    s.update(true);
    EXPECT_DOUBLE_EQ(s.current_scale(), 32768.0);
    EXPECT_EQ(s.growth_tracker(), 0);
    EXPECT_EQ(s.skipped_steps(), 1);
  }
}

TEST(GradScaler, GrowsAfterGrowthIntervalCleanStepsButNeverToInf) {
  GradScalerOptions o;
  o.growth_interval = 3;
  GradScaler s(o);
  s.update(false);
  s.update(false);
  EXPECT_DOUBLE_EQ(s.current_scale(), 65536.0);
  EXPECT_EQ(s.growth_tracker(), 2);
  s.update(false);
  EXPECT_DOUBLE_EQ(s.current_scale(), 131072.0);
  EXPECT_EQ(s.growth_tracker(), 0);
  s.update(false);
  s.update(true);  // an overflow resets the count
  EXPECT_DOUBLE_EQ(s.current_scale(), 65536.0);
  EXPECT_EQ(s.growth_tracker(), 0);

  o.init_scale = std::numeric_limits<double>::max();
  o.growth_interval = 1;
  GradScaler big(o);
  big.update(false);
  EXPECT_TRUE(std::isfinite(big.current_scale()));
}

TEST(GradScaler, StateRoundTripsAndBadStateIsNamed) {
  GradScalerOptions o;
  o.growth_interval = 5;
  GradScaler a(o);
  a.update(true);
  a.update(false);
  a.update(false);
  GradScaler b;
  b.load_state_json(a.state_json());
  EXPECT_DOUBLE_EQ(b.current_scale(), a.current_scale());
  EXPECT_EQ(b.growth_tracker(), 2);
  EXPECT_EQ(b.state_json(), a.state_json());
  // The restored growth_interval (5) is in force: three more clean steps grow the scale.
  for (int i = 0; i < 3; ++i) b.update(false);
  EXPECT_DOUBLE_EQ(b.current_scale(), 2 * a.current_scale());

  for (const std::string bad : {"not json", "{}", R"({"scale": "x"})",
                                R"({"scale": -1, "growth_tracker": 0, "growth_factor": 2,
                                    "backoff_factor": 0.5, "growth_interval": 10})"}) {
    GradScaler c;
    try {
      c.load_state_json(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorruption) << bad;
      EXPECT_NE(std::string(e.what()).find("grad scaler"), std::string::npos) << e.what();
    }
  }
  GradScalerOptions silly;
  silly.backoff_factor = 2.0;
  EXPECT_THROW(GradScaler{silly}, Error);
}

TEST(GradScaler, StateTravelsInTheCheckpointFileAndIsOptional) {
  const std::string dir = test::temp_dir("scaler_file");
  for (const bool with : {true, false}) {
    ckpt::CheckpointMeta m;
    m.global_step = 3;
    m.config_yaml = "x: 1\n";
    if (with) {
      GradScaler s;
      s.update(true);
      m.grad_scaler_json = s.state_json();
    }
    const std::string path = dir + (with ? "/with.h5" : "/without.h5");
    {
      ckpt::FileWriter w(path, m);
      w.close();
    }
    ckpt::ReadOptions ro;
    ro.verify_file_checksum = false;  // no sidecar: not committed, just written
    ckpt::FileReader r(path, ro);
    EXPECT_EQ(r.meta().grad_scaler_json, m.grad_scaler_json);
    EXPECT_TRUE(ckpt::verify_file(path).ok()) << path;
  }
}

TEST(Precision, ParsesLightningNamesAndRefusesFp16OnCpu) {
  EXPECT_EQ(parse_precision("32"), Precision::kFp32);
  EXPECT_EQ(parse_precision("bf16-mixed"), Precision::kBf16Mixed);
  EXPECT_EQ(parse_precision("16-mixed"), Precision::kFp16Mixed);
  EXPECT_THROW(parse_precision("16"), Error);
  EXPECT_NO_THROW(check_precision_supported(Precision::kBf16Mixed, torch::kCPU));
  EXPECT_NO_THROW(check_precision_supported(Precision::kFp16Mixed, torch::Device(torch::kCUDA, 0)));
  try {
    check_precision_supported(Precision::kFp16Mixed, torch::kCPU);
    ADD_FAILURE() << "16-mixed accepted on CPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16-mixed"), std::string::npos) << e.what();
  }
}

TEST(AutocastGuard, Bf16OnCpuInsideAndRestoredOutside) {
  auto a = torch::randn({4, 4});
  auto b = torch::randn({4, 4});
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat32);
  {
    AutocastGuard outer(Precision::kBf16Mixed, torch::kCPU);
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    {
      AutocastGuard off(Precision::kFp32, torch::kCPU);  // a no-op guard
      EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    }
    {
      AutocastGuard inner(Precision::kBf16Mixed, torch::kCPU);
      EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    }
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16) << "inner guard ended autocast";
  }
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat32);
}

}  // namespace
}  // namespace ddp
