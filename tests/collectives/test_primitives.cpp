// Single-process pieces of collectives/: 16-bit conversions (checked against LibTorch's),
// the watchdog, error kinds.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <torch/torch.h>

#include "collectives/dtype.h"
#include "collectives/error.h"
#include "collectives/watchdog.h"

namespace ddp {
namespace {

TEST(Dtype, HalfAndBfloat16MatchTorchRounding) {
  torch::manual_seed(0);
  auto values = torch::cat({torch::randn({20000}) * 100, torch::randn({20000}) * 1e-5,
                            torch::tensor({0.0f, -0.0f, 65504.0f, 70000.0f, 1e-8f, 5.96e-8f,
                                           -3.0f, 1.0f / 3.0f})});
  auto half = values.to(torch::kHalf).to(torch::kFloat);
  auto bf16 = values.to(torch::kBFloat16).to(torch::kFloat);
  auto v = values.accessor<float, 1>();
  auto h = half.accessor<float, 1>();
  auto b = bf16.accessor<float, 1>();
  for (int64_t i = 0; i < values.size(0); ++i) {
    ASSERT_EQ(half_to_float(float_to_half(v[i])), h[i]) << "value " << v[i];
    ASSERT_EQ(bf16_to_float(float_to_bf16(v[i])), b[i]) << "value " << v[i];
  }
}

TEST(Dtype, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kBFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kInt64), 8u);
  EXPECT_STREQ(dtype_name(DType::kFloat16), "float16");
  EXPECT_FALSE(is_floating(DType::kInt32));
}

TEST(Watchdog, FiresOnceWhenAScopeOutlivesTheTimeout) {
  std::atomic<int> fired{0};
  std::string what;
  {
    Watchdog dog(0.2, [&](const char* w, double elapsed) {
      what = w;
      EXPECT_GE(elapsed, 0.2);
      ++fired;
    });
    Watchdog::Scope s(dog, "MPI_Allreduce");
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
  }
  EXPECT_EQ(fired.load(), 1);
  EXPECT_EQ(what, "MPI_Allreduce");
}

TEST(Watchdog, QuietWhenCallsFinishInTime) {
  std::atomic<int> fired{0};
  {
    Watchdog dog(0.2, [&](const char*, double) { ++fired; });
    for (int i = 0; i < 20; ++i) {
      Watchdog::Scope s(dog, "MPI_Bcast");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_EQ(fired.load(), 0);
}

TEST(Error, KindsMapToDistinctExitCodes) {
  EXPECT_EQ(exit_code_for(ErrorKind::kInvalidArgument), kExitInvalidInput);
  EXPECT_EQ(exit_code_for(ErrorKind::kTimeout), kExitDistributed);
  EXPECT_EQ(exit_code_for(ErrorKind::kIOError), kExitIO);
  EXPECT_NE(kExitInvalidInput, kExitDistributed);
  Error e(ErrorKind::kCorruption, "bad");
  EXPECT_EQ(e.kind(), ErrorKind::kCorruption);
  EXPECT_STREQ(e.what(), "bad");
}

}  // namespace
}  // namespace ddp
