// Resume's hand-over under mpirun: what rank 0 read reaches every rank byte for byte, for any
// chunk size (tensors larger than a chunk, smaller ones packed, empty ones, a last partial
// chunk); every metadata field survives the header; each rank receives only its own RNG and
// sampler state, and none when the world size differs; a corrupt tensor on the root is caught
// by the receivers' checksums; the scatter primitive itself.
#include <gtest/gtest.h>

#include <random>

#include <fmt/format.h>

#include "checkpoint/checkpoint_broadcast.h"
#include "collectives/agreement.h"
#include "collectives/error.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::world;

TensorEntry make_tensor(const std::string& path, DType dtype, std::vector<int64_t> shape,
                        std::mt19937* rng) {
  TensorEntry t;
  t.path = path;
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t n = dtype_size(dtype);
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  t.data.resize(n);
  for (auto& b : t.data) b = static_cast<uint8_t>((*rng)());
  t.checksum = checksum_bytes(t.data.data(), t.data.size());
  return t;
}

// What rank 0 would have read: every meta field set to something distinctive.
Checkpoint make_checkpoint(int64_t world_size) {
  std::mt19937 rng(7);
  Checkpoint c;
  auto& m = c.meta;
  m.format_version = 1;
  m.global_step = 1234;
  m.epoch = 5;
  m.batch_in_epoch = 17;
  m.samples_in_epoch = 17 * 16 * world_size;
  m.world_size = world_size;
  m.batch_size = 16;
  m.weights_only = false;
  m.ddp_runtime_version = "0.9.9";
  m.torch_version = "1.13.1";
  m.hdf5_version = "1.10.8";
  m.created_utc = "2026-12-04T01:02:03Z";
  m.config_yaml = "trainer:\n  max_steps: 10\n";
  m.hparams_json = R"({"hidden": [3, 4]})";
  m.fingerprint = "00ff00ff00ff00ff";
  m.optimizer_json = R"({"name": "adamw"})";
  m.scheduler_json = R"({"name": "none"})";
  m.grad_scaler_json = R"({"scale": 65536.0})";
  m.callbacks_json = "{\"best\": \"a \\u00e9 b\"}";
  m.metrics = {{"val_loss", 0.125}, {"train_loss", -1.5e-300}};
  c.tensors.push_back(make_tensor("model/big", DType::kFloat32, {300, 71}, &rng));
  c.tensors.push_back(make_tensor("model/a.bias", DType::kFloat32, {9}, &rng));
  c.tensors.push_back(make_tensor("model/empty", DType::kFloat32, {0, 4}, &rng));
  c.tensors.push_back(make_tensor("model/scalar", DType::kFloat64, {}, &rng));
  c.tensors.push_back(make_tensor("model/odd", DType::kUInt8, {13}, &rng));
  c.tensors.push_back(make_tensor("optimizer/big/exp_avg", DType::kFloat32, {300, 71}, &rng));
  c.tensors.push_back(make_tensor("optimizer/big/step", DType::kInt64, {1}, &rng));
  for (int64_t r = 0; r < world_size; ++r) {
    RankState s;
    s.rank = r;
    s.cpu_rng.assign(static_cast<size_t>(100 + r), static_cast<uint8_t>(r + 1));
    if (r % 2) s.cuda_rng.assign(3, static_cast<uint8_t>(0xc0 + r));
    s.sampler_epoch = 5;
    s.sampler_index = 1000 + r;
    c.ranks.push_back(s);
  }
  c.verified_file = true;
  return c;
}

void expect_same(const Checkpoint& want, const Checkpoint& got) {
  EXPECT_EQ(encode_header(want), encode_header(got));  // every meta field and tensor header
  ASSERT_EQ(want.tensors.size(), got.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    EXPECT_EQ(want.tensors[i].data, got.tensors[i].data) << want.tensors[i].path;
  }
}

TEST(CheckpointBroadcast, HeaderRoundTripsEveryField) {
  const Checkpoint c = make_checkpoint(3);
  const Checkpoint back = decode_header(encode_header(c));
  EXPECT_EQ(back.meta.global_step, 1234);
  EXPECT_EQ(back.meta.metrics.at("train_loss"), -1.5e-300);
  EXPECT_EQ(back.meta.callbacks_json, c.meta.callbacks_json);
  EXPECT_EQ(back.meta.grad_scaler_json, c.meta.grad_scaler_json);
  EXPECT_TRUE(back.verified_file);
  ASSERT_EQ(back.tensors.size(), c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].path, c.tensors[i].path);
    EXPECT_EQ(back.tensors[i].shape, c.tensors[i].shape);
    EXPECT_EQ(back.tensors[i].dtype, c.tensors[i].dtype);
    EXPECT_EQ(back.tensors[i].checksum, c.tensors[i].checksum);
    EXPECT_EQ(back.tensors[i].data.size(), c.tensors[i].data.size());
  }
  EXPECT_THROW(decode_header("{\"meta\": {}}"), Error);
}

TEST(CheckpointBroadcast, RankStateRoundTrips) {
  const Checkpoint c = make_checkpoint(2);
  const RankState back = decode_rank_state(encode_rank_state(c.ranks[1]));
  EXPECT_EQ(back.rank, 1);
  EXPECT_EQ(back.cpu_rng, c.ranks[1].cpu_rng);
  EXPECT_EQ(back.cuda_rng, c.ranks[1].cuda_rng);
  EXPECT_EQ(back.sampler_index, 1001);
  auto truncated = encode_rank_state(c.ranks[1]);
  truncated.resize(truncated.size() - 1);
  EXPECT_THROW(decode_rank_state(truncated), Error);
}

TEST(CheckpointBroadcast, EveryRankGetsTheSameBytesAtAnyChunkSize) {
  auto& comm = world();
  const Checkpoint want = make_checkpoint(comm.size());
  // Smaller than every tensor, odd, exactly a tensor, between sizes, larger than everything.
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{85200}, size_t{100000}, size_t{1} << 24}) {
    SCOPED_TRACE(chunk);
    Checkpoint c;
    if (comm.rank() == 0) c = want;
    BroadcastOptions opts;
    opts.chunk_bytes = chunk;
    broadcast_checkpoint(comm, 0, &c, opts);
    expect_same(want, c);
    if (comm.rank() == 0) {
      EXPECT_EQ(c.ranks.size(), want.ranks.size());  // the root keeps what it read
    } else {
      ASSERT_EQ(c.ranks.size(), 1u);
      const RankState& mine = c.ranks[0];
      EXPECT_EQ(mine.rank, comm.rank());
      EXPECT_EQ(mine.cpu_rng, want.ranks[static_cast<size_t>(comm.rank())].cpu_rng);
      EXPECT_EQ(mine.cuda_rng, want.ranks[static_cast<size_t>(comm.rank())].cuda_rng);
      EXPECT_EQ(mine.sampler_index, 1000 + comm.rank());
    }
  }
}

// ZeRO-1's resume: targeted tensors reach their rank alone, byte for byte, at any chunk size
// (several per round, one larger than a round, one for the root itself); every rank, the
// root too, keeps the shared tensors and its own in header order and nothing else.
TEST(CheckpointBroadcast, TargetedTensorsReachOnlyTheirRank) {
  auto& comm = world();
  Checkpoint want = make_checkpoint(comm.size());
  std::mt19937 rng(11);
  for (int r = 0; r < comm.size(); ++r) {
    for (int k = 0; k < 3; ++k) {
      want.tensors.push_back(make_tensor(fmt::format("optimizer/p{}/f{}", r, k), DType::kFloat32,
                                         {k == 2 ? 5000 : 3 + r}, &rng));
    }
  }
  auto destination = [&](const std::string& path) {
    if (path.rfind("optimizer/p", 0) != 0) return -1;
    return std::stoi(path.substr(11, path.find('/', 11) - 11)) % comm.size();
  };
  for (size_t chunk : {size_t{1}, size_t{40}, size_t{100000}, size_t{1} << 24}) {
    SCOPED_TRACE(chunk);
    Checkpoint c;
    if (comm.rank() == 0) c = want;
    BroadcastOptions opts;
    opts.chunk_bytes = chunk;
    opts.destination = destination;
    broadcast_checkpoint(comm, 0, &c, opts);
    std::vector<const TensorEntry*> expected;
    for (const auto& t : want.tensors) {
      const int d = destination(t.path);
      if (d < 0 || d == comm.rank()) expected.push_back(&t);
    }
    ASSERT_EQ(c.tensors.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(c.tensors[i].path, expected[i]->path);
      EXPECT_EQ(c.tensors[i].data, expected[i]->data) << expected[i]->path;
    }
  }
}

TEST(CheckpointBroadcast, AnotherWorldSizeSendsNoRankState) {
  auto& comm = world();
  const Checkpoint want = make_checkpoint(comm.size() + 1);
  Checkpoint c;
  if (comm.rank() == 0) c = want;
  broadcast_checkpoint(comm, 0, &c);
  expect_same(want, c);
  if (comm.rank() != 0) EXPECT_TRUE(c.ranks.empty());
}

TEST(CheckpointBroadcast, ReceiversCatchBytesThatDoNotMatchTheirChecksum) {
  auto& comm = world();
  if (comm.size() < 2) GTEST_SKIP() << "needs a receiver";
  Checkpoint c;
  if (comm.rank() == 0) {
    c = make_checkpoint(comm.size());
    c.tensors[1].data[3] ^= 0x10;  // corrupted in the root's memory after it was verified
  }
  std::string message;
  try {
    run_agreed(comm, "broadcast", [&] { broadcast_checkpoint(comm, 0, &c); });
  } catch (const AgreedError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("model/a.bias"), std::string::npos) << message;
  EXPECT_NE(message.find("received from rank 0"), std::string::npos) << message;
}

TEST(Communicator, ScatterBytesGivesEachRankItsPart) {
  auto& comm = world();
  for (int root = 0; root < comm.size(); ++root) {
    std::vector<std::vector<uint8_t>> parts;
    if (comm.rank() == root) {
      for (int r = 0; r < comm.size(); ++r) {
        parts.emplace_back(static_cast<size_t>(r * 3), static_cast<uint8_t>(r + 10));
      }
    }
    const auto mine = comm.scatter_bytes(comm.rank() == root ? &parts : nullptr, root);
    EXPECT_EQ(mine, std::vector<uint8_t>(static_cast<size_t>(comm.rank() * 3),
                                         static_cast<uint8_t>(comm.rank() + 10)));
  }
}

}  // namespace
}  // namespace ddp::ckpt
