// DistributedSampler: PyTorch's sizes and padding, shard coverage, determinism across ranks,
// and the global-batch property (W ranks x batch B == 1 rank x batch W*B).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "collectives/error.h"
#include "runtime/data/distributed_sampler.h"

namespace ddp {
namespace {

using Indices = std::vector<int64_t>;

std::vector<Indices> all_shards(int64_t n, int world, bool shuffle, int64_t seed, bool drop_last,
                                int64_t epoch = 0) {
  std::vector<Indices> shards;
  for (int r = 0; r < world; ++r) {
    DistributedSampler s(n, r, world, shuffle, seed, drop_last);
    s.set_epoch(epoch);
    shards.push_back(s.indices());
    EXPECT_EQ(static_cast<int64_t>(shards.back().size()), s.num_samples())
        << "n=" << n << " world=" << world << " rank=" << r;
  }
  return shards;
}

// Undoes the strided split: position r + W*j of the global list is rank r's j-th index.
Indices interleave(const std::vector<Indices>& shards) {
  Indices global;
  const size_t per_rank = shards.front().size();
  for (size_t j = 0; j < per_rank; ++j) {
    for (const Indices& s : shards) global.push_back(s.at(j));
  }
  return global;
}

TEST(DistributedSampler, NumSamplesMatchesPyTorch) {
  struct Case {
    int64_t n;
    int world;
    bool drop_last;
    int64_t expected;
  };
  // PyTorch: drop_last and N % W != 0 -> ceil((N - W) / W), else ceil(N / W).
  const Case cases[] = {
      {10, 4, false, 3}, {10, 4, true, 2}, {8, 4, false, 2}, {8, 4, true, 2},
      {3, 4, false, 1},  {3, 4, true, 0},  {0, 3, false, 0}, {0, 3, true, 0},
      {1, 1, false, 1},  {7, 1, true, 7},  {2, 5, false, 1}, {11, 3, true, 3},
  };
  for (const Case& c : cases) {
    DistributedSampler s(c.n, 0, c.world, /*shuffle=*/true, /*seed=*/0, c.drop_last);
    EXPECT_EQ(s.num_samples(), c.expected)
        << "n=" << c.n << " world=" << c.world << " drop_last=" << c.drop_last;
  }
}

TEST(DistributedSampler, PaddingRepeatsTheHeadLikePyTorch) {
  // list(range(10)) padded to 12 with its first 2, then split with stride 4.
  EXPECT_EQ(all_shards(10, 4, false, 0, false),
            (std::vector<Indices>{{0, 4, 8}, {1, 5, 9}, {2, 6, 0}, {3, 7, 1}}));
  // Cut to 8.
  EXPECT_EQ(all_shards(10, 4, false, 0, true),
            (std::vector<Indices>{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // Padding (3) longer than the list (2): PyTorch repeats the whole list, [0, 1, 0, 1, 0].
  EXPECT_EQ(all_shards(2, 5, false, 0, false),
            (std::vector<Indices>{{0}, {1}, {0}, {1}, {0}}));
  // N = 1, W = 3: every rank gets sample 0.
  EXPECT_EQ(all_shards(1, 3, false, 0, false), (std::vector<Indices>{{0}, {0}, {0}}));
  // N < W with drop_last: nothing at all.
  EXPECT_EQ(all_shards(3, 4, false, 0, true), (std::vector<Indices>{{}, {}, {}, {}}));
  // N = 0.
  EXPECT_EQ(all_shards(0, 2, true, 0, false), (std::vector<Indices>{{}, {}}));
}

TEST(DistributedSampler, ShardsCoverTheDatasetAndAreDisjoint) {
  const int64_t sizes[] = {0, 1, 2, 5, 10, 12, 17, 100, 101};
  for (int64_t n : sizes) {
    for (int world : {1, 2, 3, 4, 7}) {
      for (bool drop_last : {false, true}) {
        SCOPED_TRACE(testing::Message() << "n=" << n << " world=" << world
                                        << " drop_last=" << drop_last);
        const auto shards = all_shards(n, world, /*shuffle=*/true, /*seed=*/7, drop_last);
        const Indices global = interleave(shards);
        for (int64_t i : global) {
          ASSERT_GE(i, 0);
          ASSERT_LT(i, n);
        }
        if (drop_last) {
          // A prefix of a permutation, cut to a multiple of W: no index twice.
          EXPECT_EQ(static_cast<int64_t>(global.size()), n / world * world);
          EXPECT_EQ(std::set<int64_t>(global.begin(), global.end()).size(), global.size());
        } else {
          // The whole permutation, then its head again as padding.
          ASSERT_GE(static_cast<int64_t>(global.size()), n);
          EXPECT_LT(static_cast<int64_t>(global.size()), n + world);
          Indices head(global.begin(), global.begin() + n);
          std::sort(head.begin(), head.end());
          for (int64_t i = 0; i < n; ++i) ASSERT_EQ(head[i], i);
          for (size_t p = n; p < global.size(); ++p) {
            ASSERT_EQ(global[p], global[p % n]) << "padding position " << p;
          }
        }
        if (drop_last || (n > 0 && n % world == 0)) {
          // No padding: the shards are pairwise disjoint.
          std::set<int64_t> seen;
          for (const Indices& s : shards) {
            for (int64_t i : s) EXPECT_TRUE(seen.insert(i).second) << "index " << i;
          }
        }
      }
    }
  }
}

TEST(DistributedSampler, SameSeedAndEpochGiveTheSameOrderOnEveryRank) {
  // Two independently built sets of ranks agree (no hidden global RNG state).
  const auto a = all_shards(57, 3, true, 123, false, 4);
  const auto b = all_shards(57, 3, true, 123, false, 4);
  EXPECT_EQ(a, b);
  // The shuffled order is a real shuffle, and it depends on the seed.
  const Indices global = interleave(a);
  Indices identity(57);
  for (int64_t i = 0; i < 57; ++i) identity[i] = i;
  EXPECT_NE(Indices(global.begin(), global.begin() + 57), identity);
  EXPECT_NE(all_shards(57, 3, true, 124, false, 4), a);
  // A 1-rank sampler sees the same permutation as the interleaved ranks.
  DistributedSampler one(57, 0, 1, true, 123, false);
  one.set_epoch(4);
  EXPECT_EQ(one.indices(), Indices(global.begin(), global.begin() + 57));
  // seed + epoch is what matters (PyTorch seeds its generator with seed + epoch).
  DistributedSampler shifted(57, 0, 1, true, 120, false);
  shifted.set_epoch(7);
  EXPECT_EQ(shifted.indices(), one.indices());
}

TEST(DistributedSampler, SetEpochChangesTheOrder) {
  DistributedSampler s(64, 1, 2, true, 42, true);
  const Indices e0 = s.indices();
  s.set_epoch(1);
  EXPECT_EQ(s.epoch(), 1);
  const Indices e1 = s.indices();
  EXPECT_NE(e0, e1);
  s.set_epoch(0);
  EXPECT_EQ(s.indices(), e0);
  // Without shuffle the epoch does not matter.
  DistributedSampler plain(64, 1, 2, false, 42, true);
  const Indices p0 = plain.indices();
  plain.set_epoch(3);
  EXPECT_EQ(plain.indices(), p0);
}

TEST(DistributedSampler, GlobalBatchEqualsOneRankWithWorldTimesBatch) {
  const int64_t n = 103;
  const int64_t batch = 5;
  for (int world : {1, 2, 3, 4}) {
    for (bool drop_last : {false, true}) {
      for (int64_t epoch : {0, 3}) {
        SCOPED_TRACE(testing::Message() << "world=" << world << " drop_last=" << drop_last
                                        << " epoch=" << epoch);
        DistributedSampler single(n, 0, 1, true, 9, drop_last);
        single.set_epoch(epoch);
        const Indices reference = single.indices();
        const auto shards = all_shards(n, world, true, 9, drop_last, epoch);
        const int64_t per_rank = static_cast<int64_t>(shards[0].size());
        int64_t compared = 0;
        for (int64_t k = 0; (k + 1) * batch <= per_rank && (k + 1) * batch * world <= n; ++k) {
          Indices global_batch;
          for (const Indices& s : shards) {
            global_batch.insert(global_batch.end(), s.begin() + k * batch,
                                s.begin() + (k + 1) * batch);
          }
          Indices expected(reference.begin() + k * batch * world,
                           reference.begin() + (k + 1) * batch * world);
          std::sort(global_batch.begin(), global_batch.end());
          std::sort(expected.begin(), expected.end());
          EXPECT_EQ(global_batch, expected) << "batch " << k;
          ++compared;
        }
        EXPECT_EQ(compared, n / (batch * world));
      }
    }
  }
}

TEST(DistributedSampler, RejectsBadArguments) {
  EXPECT_THROW(DistributedSampler(10, 2, 2, true, 0, false), Error);
  EXPECT_THROW(DistributedSampler(10, -1, 2, true, 0, false), Error);
  EXPECT_THROW(DistributedSampler(10, 0, 0, true, 0, false), Error);
  EXPECT_THROW(DistributedSampler(-1, 0, 1, true, 0, false), Error);
  try {
    DistributedSampler(10, 4, 4, true, 0, false);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("rank 4"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ddp
