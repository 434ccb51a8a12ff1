// Whole-file checksums (checkpoint/file_checksum.h): the block algorithm against a reference
// computed here from its definition, the older whole-stream algorithm still verifying, and the
// writer's block digests giving the same checksum as reading the whole file back.
#include <gtest/gtest.h>

#include <random>

#include <nlohmann/json.hpp>

#include "checkpoint/commit.h"
#include "checkpoint/file_checksum.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/format_writer.h"
#include "checkpoint/sidecar.h"
#include "tests/checkpoint/ckpt_fixtures.h"
#include "tests/test_util.h"

namespace ddp::ckpt {
namespace {

using test::slurp;
using test::spit;

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// The documented definition, spelled out independently of the implementation.
uint64_t reference_blocks_checksum(const std::string& content) {
  std::string le;
  for (size_t off = 0; off < content.size(); off += 65536) {
    const size_t n = std::min<size_t>(65536, content.size() - off);
    const uint64_t d = checksum_bytes(content.data() + off, n);
    for (int k = 0; k < 8; ++k) le.push_back(static_cast<char>((d >> (8 * k)) & 0xff));
  }
  return checksum_bytes(le.data(), le.size());
}

TEST(FileChecksum, BlocksAlgorithmMatchesItsDefinitionAtEverySizeEdge) {
  const std::string dir = ddp::test::temp_dir("file-checksum-sizes");
  // 70 MiB + 5 takes the multi-threaded path of a full read.
  for (size_t n : {size_t{0}, size_t{1}, size_t{65535}, size_t{65536}, size_t{65537},
                   size_t{5 * 65536 + 123}, size_t{(70u << 20) + 5}}) {
    const std::string path = dir + "/f" + std::to_string(n);
    const std::string content = random_bytes(n, static_cast<uint32_t>(n));
    spit(path, content);
    const FileHash h = default_file_system().hash_file(path);
    EXPECT_EQ(h.algorithm, FileChecksumAlgorithm::kXxh3Blocks64k);
    EXPECT_EQ(h.bytes, n);
    EXPECT_EQ(h.checksum, reference_blocks_checksum(content)) << n << " bytes";
    const FileHash whole =
        default_file_system().hash_file(path, FileChecksumAlgorithm::kXxh3Whole);
    EXPECT_EQ(whole.algorithm, FileChecksumAlgorithm::kXxh3Whole);
    EXPECT_EQ(whole.checksum, checksum_bytes(content.data(), content.size())) << n << " bytes";
  }
}

TEST(FileChecksum, AlgorithmNamesRoundTrip) {
  for (auto a : {FileChecksumAlgorithm::kXxh3Blocks64k, FileChecksumAlgorithm::kXxh3Whole}) {
    EXPECT_EQ(parse_algorithm(algorithm_name(a)), a);
  }
  EXPECT_STREQ(algorithm_name(kFileChecksumAlgorithm), "xxh3_64_b64k");
  EXPECT_FALSE(parse_algorithm("md5"));
  EXPECT_FALSE(parse_algorithm(""));
}

TEST(FileChecksum, KnownBlocksAreUsedInsteadOfRead) {
  const std::string dir = ddp::test::temp_dir("file-checksum-known");
  const std::string path = dir + "/f";
  const std::string content = random_bytes(10 * 65536 + 7, 3);
  spit(path, content);
  BlockDigests known;
  for (uint64_t b : {0, 3, 4, 9}) {
    known.set(b, checksum_bytes(content.data() + b * 65536, 65536));
  }
  EXPECT_EQ(known.known(), 4u);
  EXPECT_EQ(default_file_system().hash_file(path, kFileChecksumAlgorithm, &known).checksum,
            reference_blocks_checksum(content));
  // A digest that is known is trusted: a wrong one changes the result (it is not re-read).
  known.set(3, 12345);
  EXPECT_EQ(known.known(), 4u);
  EXPECT_NE(default_file_system().hash_file(path, kFileChecksumAlgorithm, &known).checksum,
            reference_blocks_checksum(content));
}

TEST(FileChecksum, RegionHasherDigestsExactlyTheBlocksWhollyInside) {
  const std::string file = random_bytes(12 * 65536, 5);
  std::mt19937 rng(11);
  for (auto [begin, end] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 12 * 65536}, {100, 5 * 65536 + 1}, {65536, 3 * 65536}, {70000, 130000},
           {65535, 3 * 65536 + 1}, {10, 20}}) {
    BlockDigests out;
    RegionBlockHasher hasher(begin, end, &out);
    for (uint64_t pos = begin; pos < end;) {  // pieces of random sizes, 1 byte to 200 KiB
      const uint64_t n = std::min<uint64_t>(end - pos, 1 + rng() % 200000);
      hasher.feed(file.data() + pos, static_cast<size_t>(n));
      pos += n;
    }
    size_t expected = 0;
    for (uint64_t b = 0; b < 12; ++b) {
      const bool inside = b * 65536 >= begin && (b + 1) * 65536 <= end;
      const uint64_t* d = out.find(b);
      ASSERT_EQ(d != nullptr, inside) << "block " << b << " of [" << begin << ", " << end << ")";
      if (inside) {
        ++expected;
        EXPECT_EQ(*d, checksum_bytes(file.data() + b * 65536, 65536)) << "block " << b;
      }
    }
    EXPECT_EQ(out.known(), expected);
  }
}

// A file written the way rank 0 writes one (tensors streamed in pieces of odd sizes, of several
// dtypes, small ones in between): the commit's checksum from the writer's digests is the
// checksum of the file read back in full, and the digests do cover most of it.
TEST(FileChecksum, WriterDigestsGiveTheChecksumOfTheFileAsWritten) {
  const std::string dir = ddp::test::temp_dir("file-checksum-writer");
  const std::string final_path = dir + "/step=5.h5";
  const std::string tmp = temp_path_for(final_path);
  Checkpoint c = test::sample_checkpoint(5);
  c.tensors.push_back(test::make_tensor("model/big.weight", DType::kFloat32, {700, 300}));
  c.tensors.push_back(test::make_tensor("model/half", DType::kFloat16, {123457}));
  c.tensors.push_back(test::make_tensor("model/tiny", DType::kInt64, {3}));
  c.tensors.push_back(test::make_tensor("optimizer/big.weight/exp_avg", DType::kFloat64, {90001}));
  uint64_t payload = 0;
  BlockDigests digests;
  {
    FileWriter w(tmp, c.meta);
    std::mt19937 rng(7);
    for (const TensorEntry& t : c.tensors) {
      w.begin_tensor(t.path, t.dtype, t.shape);
      for (size_t off = 0; off < t.data.size();) {
        const size_t n = std::min<size_t>(t.data.size() - off, 1 + rng() % (3u << 20));
        w.append_tensor_data(t.data.data() + off, n);
        off += n;
      }
      w.end_tensor();
      payload += t.data.size();
    }
    for (const RankState& r : c.ranks) w.add_rank_state(r);
    w.close();
    digests = w.block_digests();
  }
  EXPECT_GE(digests.known() * kChecksumBlockBytes, payload - 8 * kChecksumBlockBytes);
  const FileHash full = default_file_system().hash_file(tmp);
  const CommitInfo info =
      commit_checkpoint(default_file_system(), tmp, final_path, 5, true, &digests);
  EXPECT_EQ(info.checksum, full.checksum);
  EXPECT_EQ(info.checksum, reference_blocks_checksum(slurp(final_path)));
  EXPECT_TRUE(verify_against_sidecar(default_file_system(), final_path));
  const Checkpoint back = read_checkpoint(final_path);
  EXPECT_EQ(back.tensors.size(), c.tensors.size());
}

// Files committed before the block algorithm (sidecar and latest.json say "xxh3_64") still
// verify and load, and damage to them is still caught.
TEST(FileChecksum, OlderWholeStreamChecksumsStillVerify) {
  const std::string dir = ddp::test::temp_dir("file-checksum-old");
  const CommitInfo info = test::save_checkpoint(dir, "step=100.h5", test::sample_checkpoint(100));
  const std::string content = slurp(info.path);
  const std::string old_sum = hex64(checksum_bytes(content.data(), content.size()));
  spit(info.sidecar_path, nlohmann::json{{"bytes", content.size()},
                                         {"algorithm", "xxh3_64"},
                                         {"checksum", old_sum},
                                         {"global_step", 100}}.dump());
  spit(dir + "/latest.json",
       nlohmann::json{{"file", "step=100.h5"},
                      {"global_step", 100},
                      {"bytes", content.size()},
                      {"checksum", {{"algorithm", "xxh3_64"}, {"value", old_sum}}}}.dump());
  EXPECT_TRUE(verify_against_sidecar(default_file_system(), info.path));
  std::string warning;
  const auto latest = read_latest(default_file_system(), dir, &warning);
  ASSERT_TRUE(latest) << warning;
  EXPECT_EQ(latest->algorithm, FileChecksumAlgorithm::kXxh3Whole);
  EXPECT_EQ(hex64(latest->checksum), old_sum);
  EXPECT_EQ(read_checkpoint(info.path).meta.global_step, 100);

  test::flip_byte(info.path, content.size() / 2);
  try {
    verify_against_sidecar(default_file_system(), info.path);
    FAIL() << "a flipped byte verified";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorruption);
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("xxh3_64"), std::string::npos) << e.what();
  }
}

// An algorithm this build does not know is a newer ddp-runtime's, never "corrupt" (exit 5, not
// 4): the file may be perfectly good, and falling back past it would lose its progress.
TEST(FileChecksum, UnknownAlgorithmIsANewerVersionNamingTheKnownOnes) {
  try {
    sidecar_from_json(R"({"bytes": 10, "algorithm": "xxh4_128", "checksum": "00ff"})", "x.sum");
    FAIL() << "xxh4_128 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNewerVersion);
    EXPECT_EQ(exit_code_for(e.kind()), 5);
    EXPECT_NE(std::string(e.what()).find("newer ddp-runtime"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("xxh3_64_b64k"), std::string::npos) << e.what();
  }
  // Garbage is still garbage.
  EXPECT_THROW(
      {
        try {
          sidecar_from_json(R"({"bytes": 10, "algorithm": 7, "checksum": "00ff"})", "x.sum");
        } catch (const Error& e) {
          EXPECT_EQ(e.kind(), ErrorKind::kCorruption);
          throw;
        }
      },
      Error);
}

}  // namespace
}  // namespace ddp::ckpt
