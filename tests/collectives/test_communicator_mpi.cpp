// MpiCommunicator collectives at the world size this binary was launched with (ctest runs it
// at 1, 2, 3 and 4 ranks), for empty, single, odd and large buffers.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>

#include "collectives/agreement.h"
#include "collectives/error.h"
#include "collectives/mpi_communicator.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;

class CommSizes : public ::testing::TestWithParam<size_t> {};

// Value rank r contributes at element i: distinct per rank and element, exact in float.
float value(int rank, size_t i) { return static_cast<float>((rank + 1) * 1000 + (i % 997)); }

TEST_P(CommSizes, AllReduceSumFloatInPlace) {
  const size_t n = GetParam();
  auto& c = world();
  std::vector<float> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = value(c.rank(), i);
  c.all_reduce(buf.data(), n, DType::kFloat32, ReduceOp::kSum);
  for (size_t i = 0; i < n; ++i) {
    float expected = 0;
    for (int r = 0; r < c.size(); ++r) expected += value(r, i);
    ASSERT_EQ(buf[i], expected) << "element " << i;
  }
}

TEST_P(CommSizes, AllReduceAvgDouble) {
  const size_t n = GetParam();
  auto& c = world();
  std::vector<double> buf(n, static_cast<double>(c.rank()));
  c.all_reduce(buf.data(), n, DType::kFloat64, ReduceOp::kAvg);
  const double expected = (c.size() - 1) / 2.0;
  for (size_t i = 0; i < n; ++i) ASSERT_DOUBLE_EQ(buf[i], expected);
}

TEST_P(CommSizes, AllReduceAsyncMatchesBlocking) {
  const size_t n = GetParam();
  auto& c = world();
  std::vector<float> a(n), b(n);
  for (size_t i = 0; i < n; ++i) a[i] = b[i] = value(c.rank(), i);
  // Two in flight at once, completed in reverse order.
  auto wa = c.all_reduce_async(a.data(), n, DType::kFloat32, ReduceOp::kSum);
  auto wb = c.all_reduce_async(b.data(), n, DType::kFloat32, ReduceOp::kAvg);
  while (!wb->test()) {
  }
  wa->wait();
  EXPECT_TRUE(wa->test());
  for (size_t i = 0; i < n; ++i) {
    float sum = 0;
    for (int r = 0; r < c.size(); ++r) sum += value(r, i);
    ASSERT_EQ(a[i], sum);
    ASSERT_FLOAT_EQ(b[i], sum / c.size());
  }
}

TEST_P(CommSizes, BroadcastFromEveryRoot) {
  const size_t n = GetParam();
  auto& c = world();
  for (int root = 0; root < c.size(); ++root) {
    std::vector<int64_t> buf(n, c.rank() == root ? 7 + root : -1);
    c.broadcast(buf.data(), n, DType::kInt64, root);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(buf[i], 7 + root);
  }
}

TEST_P(CommSizes, AllGather) {
  const size_t n = GetParam();
  auto& c = world();
  std::vector<int32_t> send(n, c.rank() * 10);
  std::vector<int32_t> recv(n * c.size(), -1);
  c.all_gather(send.data(), recv.data(), n, DType::kInt32);
  for (int r = 0; r < c.size(); ++r) {
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(recv[r * n + i], r * 10);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CommSizes,
                         ::testing::Values(size_t{0}, size_t{1}, size_t{7}, size_t{3'000'001}));

// Part sizes for the sharded collectives: uneven, with an empty part, scaled by the test size.
std::vector<size_t> uneven_parts(int world_size, size_t n) {
  std::vector<size_t> counts;
  for (int r = 0; r < world_size; ++r) {
    counts.push_back(r == 1 ? 0 : n + static_cast<size_t>(r) * 3);
  }
  return counts;
}

TEST_P(CommSizes, ReduceScatterUnevenPartsSumAndAvg) {
  auto& c = world();
  const auto counts = uneven_parts(c.size(), GetParam());
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  size_t offset = 0;
  for (int r = 0; r < c.rank(); ++r) offset += counts[static_cast<size_t>(r)];
  const size_t mine = counts[static_cast<size_t>(c.rank())];
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
    std::vector<float> send(total);
    for (size_t i = 0; i < total; ++i) send[i] = value(c.rank(), i);
    std::vector<float> recv(mine, -1.0f);
    auto work = c.reduce_scatter_async(send.data(), recv.data(), counts, DType::kFloat32, op);
    work->wait();
    for (size_t i = 0; i < mine; ++i) {
      float expected = 0;
      for (int r = 0; r < c.size(); ++r) expected += value(r, offset + i);
      if (op == ReduceOp::kAvg) expected *= 1.0f / static_cast<float>(c.size());
      ASSERT_EQ(recv[i], expected) << reduce_op_name(op) << " element " << i;
    }
  }
}

TEST_P(CommSizes, AllGatherIntoUnevenPartsInPlace) {
  auto& c = world();
  const auto counts = uneven_parts(c.size(), GetParam());
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  std::vector<int64_t> data(total, -1);
  size_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    for (size_t i = 0; i < counts[static_cast<size_t>(r)]; ++i, ++at) {
      if (r == c.rank()) data[at] = r * 1'000'000 + static_cast<int64_t>(i);
    }
  }
  c.all_gather_into(data.data(), counts, DType::kInt64);
  at = 0;
  for (int r = 0; r < c.size(); ++r) {
    for (size_t i = 0; i < counts[static_cast<size_t>(r)]; ++i, ++at) {
      ASSERT_EQ(data[at], r * 1'000'000 + static_cast<int64_t>(i)) << "part " << r;
    }
  }
}

TEST(Communicator, IntegerMaxMin) {
  auto& c = world();
  int64_t mx = c.rank(), mn = c.rank();
  c.all_reduce(&mx, 1, DType::kInt64, ReduceOp::kMax);
  c.all_reduce(&mn, 1, DType::kInt64, ReduceOp::kMin);
  EXPECT_EQ(mx, c.size() - 1);
  EXPECT_EQ(mn, 0);
}

TEST(Communicator, SixteenBitSums) {
  auto& c = world();
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    auto enc = t == DType::kFloat16 ? float_to_half : float_to_bf16;
    auto dec = t == DType::kFloat16 ? half_to_float : bf16_to_float;
    std::vector<uint16_t> buf(1001, enc(0.5f * (c.rank() + 1)));
    c.all_reduce(buf.data(), buf.size(), t, ReduceOp::kSum);
    const float expected = 0.5f * c.size() * (c.size() + 1) / 2.0f;
    for (uint16_t v : buf) ASSERT_FLOAT_EQ(dec(v), expected) << dtype_name(t);
  }
}

TEST(Communicator, AvgOnIntegersIsRejected) {
  int32_t x = 1;
  try {
    world().all_reduce(&x, 1, DType::kInt32, ReduceOp::kAvg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("floating-point"), std::string::npos);
  }
}

TEST(Communicator, GatherBytesVariableSizes) {
  auto& c = world();
  const int root = c.size() - 1;
  // Rank r sends 3r bytes (rank 0 sends nothing) of value r.
  std::vector<uint8_t> mine(static_cast<size_t>(3 * c.rank()), static_cast<uint8_t>(c.rank()));
  auto got = c.gather_bytes(mine.data(), mine.size(), root);
  if (c.rank() != root) {
    EXPECT_TRUE(got.empty());
    return;
  }
  ASSERT_EQ(static_cast<int>(got.size()), c.size());
  for (int r = 0; r < c.size(); ++r) {
    EXPECT_EQ(got[r], std::vector<uint8_t>(static_cast<size_t>(3 * r), static_cast<uint8_t>(r)));
  }
}

TEST(Communicator, GatherIntoCallerMemoryNeverAllocates) {
  // A GatherBuffer on caller memory (rank 0's receive ring) receives in place, and a round
  // larger than that memory is an error, not a silent reallocation outside the ring.
  auto& c = world();
  std::vector<uint8_t> ring(64, 0xEE);
  GatherBuffer view;
  view.use_memory(ring.data() + 8, 16);
  const std::vector<uint8_t> mine(c.rank() == c.size() - 1 ? 16 : 0, 0x5A);  // last rank sends
  c.gather_bytes_into(mine.data(), mine.size(), 0, c.rank() == 0 ? &view : nullptr);
  if (c.rank() == 0) {
    EXPECT_EQ(view.data(), ring.data() + 8);
    EXPECT_EQ(view.size[static_cast<size_t>(c.size() - 1)], 16u);
    for (size_t i = 0; i < ring.size(); ++i) {
      EXPECT_EQ(ring[i], i >= 8 && i < 24 ? 0x5A : 0xEE) << "ring byte " << i;
    }
    EXPECT_THROW(view.reserve(17), Error);
    EXPECT_EQ(view.data(), ring.data() + 8);
  }
}

TEST(Communicator, SixteenBitReduceScatter) {
  auto& c = world();
  std::vector<size_t> counts(static_cast<size_t>(c.size()), 5);
  std::vector<uint16_t> send(5 * counts.size(), float_to_bf16(0.25f * (c.rank() + 1)));
  std::vector<uint16_t> recv(5);
  c.reduce_scatter_async(send.data(), recv.data(), counts, DType::kBFloat16, ReduceOp::kSum)
      ->wait();
  for (uint16_t v : recv) ASSERT_FLOAT_EQ(bf16_to_float(v), 0.25f * c.size() * (c.size() + 1) / 2);
}

TEST(Communicator, ShardedCollectivesRejectWrongPartCounts) {
  auto& c = world();
  std::vector<size_t> counts(static_cast<size_t>(c.size()) + 1, 1);
  float buf[8] = {};
  EXPECT_THROW(c.reduce_scatter_async(buf, buf + 4, counts, DType::kFloat32, ReduceOp::kSum),
               Error);
  EXPECT_THROW(c.all_gather_into(buf, counts, DType::kFloat32), Error);
}

TEST(Communicator, AllGatherStrings) {
  auto& c = world();
  const auto all =
      all_gather_strings(c, std::string(static_cast<size_t>(c.rank()) * 3, 'a' + c.rank()));
  ASSERT_EQ(all.size(), static_cast<size_t>(c.size()));
  for (int r = 0; r < c.size(); ++r) {
    EXPECT_EQ(all[static_cast<size_t>(r)], std::string(static_cast<size_t>(r) * 3, 'a' + r));
  }
}

TEST(Communicator, BarrierAndBroadcastString) {
  auto& c = world();
  c.barrier();
  EXPECT_EQ(broadcast_string(c, c.rank() == 0 ? "hello ranks" : "", 0), "hello ranks");
  EXPECT_EQ(broadcast_string(c, "", 0), "");
}

TEST(Agreement, OneFailingRankFailsAllWithItsMessage) {
  auto& c = world();
  const int bad = c.size() - 1;
  try {
    run_agreed(c, "loading", [&] {
      if (c.rank() == bad) throw Error(ErrorKind::kNotFound, "data file 'x.csv' not found");
    });
    FAIL() << "every rank must throw";
  } catch (const AgreedError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("loading"), std::string::npos) << msg;
    EXPECT_NE(msg.find("x.csv"), std::string::npos) << msg;
    if (c.size() > 1) EXPECT_NE(msg.find("rank " + std::to_string(bad)), std::string::npos) << msg;
  }
  // Success path: no throw, and the communicator is still in step.
  EXPECT_NO_THROW(run_agreed(c, "ok", [] {}));
  c.barrier();
}

TEST(Communicator, AsyncWaitTimesOutWhenAPeerNeverArrives) {
  auto& w = world();
  if (w.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  MpiCommunicator c(CommunicatorOptions{0.5});
  float x = 1.0f;
  if (c.rank() == 0) {
    auto work = c.all_reduce_async(&x, 1, DType::kFloat32, ReduceOp::kSum);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      work->wait();
      FAIL() << "expected a timeout";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kTimeout);
      EXPECT_NE(std::string(e.what()).find("MPI_Iallreduce"), std::string::npos) << e.what();
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(waited, 0.45);
    EXPECT_LT(waited, 5.0);
    // The late peers arrive now; drain so the communicator is left clean.
    while (!work->test()) {
    }
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    // Non-blocking collectives only match non-blocking ones (MPI standard).
    c.all_reduce_async(&x, 1, DType::kFloat32, ReduceOp::kSum)->wait();
  }
  w.barrier();
}

TEST(Communicator, RejectsNonPositiveTimeout) {
  EXPECT_THROW(MpiCommunicator(CommunicatorOptions{0.0}), Error);
}

}  // namespace
}  // namespace ddp
