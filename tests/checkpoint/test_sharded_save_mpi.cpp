// The sharded save under mpirun: every tensor and every rank's state arrives in the file
// byte for byte, for any gather round size (records split at every possible boundary), with
// and without the zero-copy path (tensors read in place on every rank), with a snapshot
// buffer reused across saves; a failure on rank 0 reaches every rank; an async save's
// deferred copies; the gather into a reused buffer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "checkpoint/file_system.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/sharded_save.h"
#include "collectives/agreement.h"
#include "collectives/error.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::world;

struct Tensor {
  std::string path;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// The same tensors on every rank (replicated state), of awkward sizes: empty, scalar, odd
// byte counts, and one larger than the small round sizes below.
std::vector<Tensor> make_tensors(uint32_t seed, bool with_big = true) {
  std::mt19937 rng(seed);
  auto fill = [&](Tensor t) {
    size_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    t.bytes.resize(n);
    for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
    return t;
  };
  std::vector<Tensor> out{fill({"model/a.weight", DType::kFloat32, {17, 9}, {}}),
                          fill({"model/a.bias", DType::kFloat32, {9}, {}}),
                          fill({"model/empty", DType::kFloat32, {0, 4}, {}}),
                          fill({"model/scalar", DType::kFloat64, {}, {}}),
                          fill({"model/odd", DType::kUInt8, {13}, {}}),
                          fill({"optimizer/state/0/exp_avg", DType::kFloat32, {17, 9}, {}}),
                          fill({"optimizer/state/0/step", DType::kInt64, {1}, {}})};
  if (with_big) {
    out.push_back(fill({"model/big", DType::kFloat32, {300, 71}, {}}));
    // Saved from memory that only its TensorSource owns (see save()).
    out.push_back(fill({"optimizer/state/1/owned_by_source", DType::kUInt8, {1 << 20}, {}}));
  }
  return out;
}

CheckpointMeta make_meta(int64_t step) {
  CheckpointMeta m;
  m.global_step = step;
  m.world_size = world().size();
  m.config_yaml = "a: 1\n";
  m.fingerprint = "fp";
  return m;
}

RankState make_rank_state(int rank, int64_t step) {
  RankState r;
  r.rank = rank;
  r.sampler_epoch = step;
  r.sampler_index = 100 * rank + step;
  r.cpu_rng.resize(static_cast<size_t>(37 + rank));
  for (size_t i = 0; i < r.cpu_rng.size(); ++i) r.cpu_rng[i] = static_cast<uint8_t>(i * 7 + rank);
  return r;
}

// Sources over `tensors` (same order), readable in place, as the runtime makes them.
std::vector<TensorSource> sources_of(std::vector<Tensor>& tensors) {
  std::vector<TensorSource> out;
  for (auto& t : tensors) {
    TensorSource s;
    s.path = t.path;
    s.dtype = t.dtype;
    s.shape = t.shape;
    s.bytes = t.bytes.size();
    const uint8_t* data = t.bytes.data();
    s.copy_to = [data, n = t.bytes.size()](void* dst) { std::memcpy(dst, data, n); };
    s.host_data = t.bytes.data();
    if (t.path.find("owned_by_source") != std::string::npos) {
      // Like an optimizer step count turned into a tensor for the save: the source's copy_to
      // holds the only reference to the memory host_data points into.
      // Poisoned when freed, so that a write from it after the source is gone differs.
      std::shared_ptr<std::vector<uint8_t>> owned(new std::vector<uint8_t>(t.bytes),
                                                  [](std::vector<uint8_t>* v) {
                                                    std::fill(v->begin(), v->end(), 0xAB);
                                                    delete v;
                                                  });
      s.host_data = owned->data();
      s.copy_to = [owned](void* dst) { std::memcpy(dst, owned->data(), owned->size()); };
    }
    out.push_back(std::move(s));
  }
  return out;
}

SaveResult save(std::vector<Tensor>& tensors, const std::string& path, int64_t step,
                size_t chunk, bool zero_copy, std::shared_ptr<SnapshotBuffer> buffer) {
  SaveRequest req;
  req.meta = make_meta(step);
  req.tensors = sources_of(tensors);
  req.rank_state = make_rank_state(world().rank(), step);
  req.final_path = path;
  req.chunk_bytes = chunk;
  req.zero_copy = zero_copy;
  req.buffer = std::move(buffer);
  auto pending = snapshot_for_save(world(), std::move(req));
  return pending->finish(world(), default_file_system());
}

void expect_file_holds(const std::string& path, const std::vector<Tensor>& tensors,
                       int64_t step) {
  if (world().rank() != 0) return;
  FileReader reader(path);
  EXPECT_TRUE(reader.verified_file());
  EXPECT_EQ(reader.meta().global_step, step);
  ASSERT_EQ(reader.tensors().size(), tensors.size());
  for (const auto& t : tensors) {
    const TensorEntry e = reader.read_tensor(t.path);
    EXPECT_EQ(e.dtype, t.dtype) << t.path;
    EXPECT_EQ(e.shape, t.shape) << t.path;
    EXPECT_EQ(e.data, t.bytes) << t.path;
  }
  const auto ranks = reader.read_ranks();
  ASSERT_EQ(static_cast<int>(ranks.size()), world().size());
  for (int r = 0; r < world().size(); ++r) {
    const RankState want = make_rank_state(r, step);
    EXPECT_EQ(ranks[r].rank, r);
    EXPECT_EQ(ranks[r].sampler_epoch, want.sampler_epoch);
    EXPECT_EQ(ranks[r].sampler_index, want.sampler_index);
    EXPECT_EQ(ranks[r].cpu_rng, want.cpu_rng);
    EXPECT_TRUE(ranks[r].cuda_rng.empty());
  }
}

struct Case {
  size_t chunk;
  bool zero_copy;
};

class ShardedSave : public ::testing::TestWithParam<Case> {};

TEST_P(ShardedSave, EveryByteArrivesForAnyRoundSize) {
  const Case c = GetParam();
  const std::string dir = test::temp_dir("sharded_save");
  auto buffer = std::make_shared<SnapshotBuffer>();
  // Three saves through one buffer: the second and third reuse its storage.
  for (int64_t step = 1; step <= 3; ++step) {
    // Tiny rounds split every record everywhere; they get small tensors (one round each).
    auto tensors = make_tensors(static_cast<uint32_t>(step), c.chunk >= 100);
    const std::string path = dir + "/step=" + std::to_string(step) + ".h5";
    const SaveResult r = save(tensors, path, step, c.chunk, c.zero_copy, buffer);
    EXPECT_EQ(r.global_step, step);
    EXPECT_GT(r.bytes, 0u);
    expect_file_holds(path, tensors, step);
  }
}

INSTANTIATE_TEST_SUITE_P(RoundSizes, ShardedSave,
                         ::testing::Values(Case{1, false}, Case{7, true}, Case{100, false},
                                           Case{4096, true}, Case{64u << 20, false},
                                           Case{64u << 20, true}),
                         [](const auto& info) {
                           return "chunk" + std::to_string(info.param.chunk) +
                                  (info.param.zero_copy ? "_zero_copy" : "_snapshot");
                         });

TEST(ShardedSave, OnlyTheShareRanksSendTensors) {
  // Across hosts only the ranks on rank 0's host take shares (the others send only their
  // RankState, nothing crosses the network): the file is the same, byte for byte.
  const std::string dir = test::temp_dir("sharded_share_ranks");
  const int last = world().size() - 1;
  const std::vector<std::vector<int>> shares =
      last > 0 ? std::vector<std::vector<int>>{{0}, {last, 0}} : std::vector<std::vector<int>>{{0}};
  for (const std::vector<int>& share : shares) {
    for (bool zero_copy : {false, true}) {
      auto tensors = make_tensors(11, true);
      SaveRequest req;
      req.meta = make_meta(4);
      req.tensors = sources_of(tensors);
      req.rank_state = make_rank_state(world().rank(), 4);
      req.final_path = dir + "/s" + std::to_string(share.size()) + (zero_copy ? "z" : "") + ".h5";
      req.chunk_bytes = 4096;
      req.zero_copy = zero_copy;
      req.share_ranks = share;
      const auto owner = assign_shares(req.tensors, world().size(), share);
      for (int o : owner) {
        EXPECT_TRUE(std::find(share.begin(), share.end(), o) != share.end()) << o;
      }
      const std::string path = req.final_path;
      auto pending = snapshot_for_save(world(), std::move(req));
      pending->finish(world(), default_file_system());
      expect_file_holds(path, tensors, 4);
    }
  }
  EXPECT_THROW(assign_shares({}, world().size(), {world().size()}), Error);  // no rank 0
}

// ZeRO-1's state: tensors held by one rank each (TensorSource::owner), described only on the
// others, arrive byte for byte, also when the holder is not a share rank; the replicated ones
// are still spread over the share ranks.
TEST(ShardedSave, OwnedTensorsComeFromTheirOwner) {
  const std::string dir = test::temp_dir("sharded_owned");
  const int world_size = world().size();
  const int me = world().rank();
  for (bool zero_copy : {false, true}) {
    auto tensors = make_tensors(21, true);
    SaveRequest req;
    req.meta = make_meta(6);
    req.tensors = sources_of(tensors);
    for (size_t i = 0; i < req.tensors.size(); ++i) {
      auto& src = req.tensors[i];
      if (src.path.rfind("optimizer/", 0) != 0) continue;
      src.owner = static_cast<int>(i) % world_size;
      if (src.owner != me) {  // a description: any read of its bytes would be a bug
        src.host_data = nullptr;
        src.copy_to = nullptr;
      }
    }
    req.rank_state = make_rank_state(me, 6);
    req.final_path = dir + (zero_copy ? "/z.h5" : "/c.h5");
    req.chunk_bytes = 4096;
    req.zero_copy = zero_copy;
    req.share_ranks = {0};
    const auto owner = assign_shares(req.tensors, world_size, req.share_ranks);
    for (size_t i = 0; i < req.tensors.size(); ++i) {
      EXPECT_EQ(owner[i], req.tensors[i].owner >= 0 ? req.tensors[i].owner : 0)
          << req.tensors[i].path;
    }
    const std::string path = req.final_path;
    auto pending = snapshot_for_save(world(), std::move(req));
    pending->finish(world(), default_file_system());
    expect_file_holds(path, tensors, 6);
  }
  std::vector<TensorSource> bad(1);
  bad[0].owner = world_size;
  EXPECT_THROW(assign_shares(bad, world_size), Error);
}

TEST(ShardedSave, ZeroCopyReadsTheTensorsInPlaceAtFinish) {
  // The contract of zero_copy: no rank copies a tensor readable in place; rank 0 writes and
  // the others send straight from its memory during finish(), so a change made between
  // snapshot and finish shows in the file (which is why only a synchronous save may ask for
  // it), while a tensor without host_data is snapshotted.
  const std::string dir = test::temp_dir("sharded_zero_copy");
  auto tensors = make_tensors(5, false);
  SaveRequest req;
  req.meta = make_meta(1);
  req.tensors = sources_of(tensors);
  const std::string copied = "model/a.weight";  // no host_data: read through copy_to
  for (auto& src : req.tensors) {
    if (src.path == copied) src.host_data = nullptr;
  }
  req.rank_state = make_rank_state(world().rank(), 1);
  req.final_path = dir + "/a.h5";
  req.chunk_bytes = 64;  // tensors and headers in several rounds each
  req.zero_copy = true;
  auto pending = snapshot_for_save(world(), std::move(req));
  const auto before = tensors;
  for (auto& t : tensors) {
    for (auto& b : t.bytes) b = static_cast<uint8_t>(b ^ 0xFF);
  }
  pending->finish(world(), default_file_system());
  if (world().rank() != 0) return;
  FileReader reader(dir + "/a.h5");
  EXPECT_TRUE(reader.verified_file());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].bytes.empty()) continue;
    const auto& want = tensors[i].path == copied ? before[i].bytes : tensors[i].bytes;
    // Per-tensor checksums were verified on the way in (read_tensor throws on a mismatch).
    EXPECT_EQ(reader.read_tensor(tensors[i].path).data, want) << tensors[i].path;
  }
}

TEST(ShardedSave, DeferredCopiesTakeTheTensorsAsTheyAreAtCompleteSnapshot) {
  // The contract of defer_copies (an async save): tensors marked changes_only_at_update are
  // copied after snapshot_for_save returns, by finish()'s thread and complete_snapshot()
  // together; once complete_snapshot() returns, changing them no longer reaches the file.
  // Tensors not so marked (buffers) are copied inside snapshot_for_save.
  const std::string dir = test::temp_dir("sharded_deferred");
  auto tensors = make_tensors(11, false);
  Tensor huge{"model/huge", DType::kUInt8, {(9 << 20) + 3}, {}};  // several copy pieces
  huge.bytes.resize(static_cast<size_t>(huge.shape[0]));
  for (size_t i = 0; i < huge.bytes.size(); ++i) huge.bytes[i] = static_cast<uint8_t>(i * 31);
  tensors.push_back(huge);
  const std::string buffer_like = "model/a.bias";
  SaveRequest req;
  req.meta = make_meta(1);
  req.tensors = sources_of(tensors);
  for (auto& src : req.tensors) src.changes_only_at_update = src.path != buffer_like;
  req.rank_state = make_rank_state(world().rank(), 1);
  req.final_path = dir + "/a.h5";
  req.chunk_bytes = 1u << 20;
  req.defer_copies = true;
  auto pending = snapshot_for_save(world(), std::move(req));
  auto flip = [&] {
    for (auto& t : tensors) {
      for (auto& b : t.bytes) b = static_cast<uint8_t>(b ^ 0x5A);
    }
  };
  const auto at_snapshot = tensors;
  flip();  // after snapshot_for_save, before any deferred copy
  const auto at_complete = tensors;
  SaveResult result;
  std::thread background([&] { result = pending->finish(world(), default_file_system()); });
  pending->complete_snapshot();
  flip();  // the next optimizer update
  background.join();
  if (world().rank() != 0) return;
  EXPECT_GT(result.deferred_copy_s, 0.0);  // rank 0 owns model/huge
  FileReader reader(dir + "/a.h5");
  EXPECT_TRUE(reader.verified_file());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].bytes.empty()) continue;
    const auto& want = tensors[i].path == buffer_like ? at_snapshot[i] : at_complete[i];
    EXPECT_EQ(reader.read_tensor(tensors[i].path).data, want.bytes) << tensors[i].path;
  }
}

TEST(ShardedSave, FailureOnRankZeroReachesEveryRank) {
  const std::string dir = test::temp_dir("sharded_fail");
  auto tensors = make_tensors(9);
  // The directory does not exist: rank 0 cannot create the file; every rank must throw the
  // same agreed error after taking part in every gather round.
  try {
    save(tensors, dir + "/missing/sub/x.h5", 1, 64, true, nullptr);
    ADD_FAILURE() << "save into a missing directory succeeded";
  } catch (const AgreedError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint save at step 1"), std::string::npos)
        << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kIOError) << e.what();
  }
  // The communicator is still in step: a normal save works afterwards.
  const SaveResult ok = save(tensors, dir + "/ok.h5", 2, 64, true, nullptr);
  EXPECT_EQ(ok.global_step, 2);
  expect_file_holds(dir + "/ok.h5", tensors, 2);
}

TEST(GatherBytesInto, ReusedBufferHoldsEachRoundExactly) {
  auto& comm = world();
  GatherBuffer buf;
  size_t first_capacity = 0;
  for (int round = 0; round < 4; ++round) {
    // Round sizes shrink after the first: the buffer must not be reallocated.
    const size_t n = static_cast<size_t>(comm.rank() * 3 + (round == 0 ? 1000 : 10 - round));
    std::vector<uint8_t> mine(n);
    for (size_t i = 0; i < n; ++i) mine[i] = static_cast<uint8_t>(comm.rank() * 31 + i + round);
    comm.gather_bytes_into(mine.data(), n, 0, comm.rank() == 0 ? &buf : nullptr);
    if (comm.rank() != 0) continue;
    if (round == 0) first_capacity = buf.capacity();
    EXPECT_EQ(buf.capacity(), first_capacity);
    for (int r = 0; r < comm.size(); ++r) {
      const size_t want = static_cast<size_t>(r * 3 + (round == 0 ? 1000 : 10 - round));
      ASSERT_EQ(buf.size[static_cast<size_t>(r)], want);
      for (size_t i = 0; i < want; ++i) {
        ASSERT_EQ(buf.of(r)[i], static_cast<uint8_t>(r * 31 + i + round)) << "rank " << r;
      }
    }
  }
}

}  // namespace
}  // namespace ddp::ckpt
