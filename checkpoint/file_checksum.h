// Whole-file checksums of checkpoint files, by the algorithm name recorded beside the value in
// the sidecar and in latest.json (docs/checkpoint-format.md):
//
//   "xxh3_64_b64k" (written since 2026-12-03): the file cut into blocks of 64 KiB (the last one
//       shorter, none for an empty file); the checksum is the xxh3_64 of the blocks' xxh3_64
//       digests, each as 8 little-endian bytes, concatenated in file order. Blocks hash
//       independently: the writer hashes the blocks that lie inside a tensor's bytes from
//       memory while it writes them (BlockDigests), so the commit reads back only the rest
//       (HDF5's metadata, written at close), and a reader may hash blocks in parallel.
//   "xxh3_64" (files committed before): the xxh3_64 of the whole content. Still verified.
//
// Thread-safety: plain functions and a value type; a BlockDigests is used by one thread at a
// time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ddp::ckpt {

enum class FileChecksumAlgorithm {
  kXxh3Blocks64k,  // "xxh3_64_b64k": what commits write
  kXxh3Whole,      // "xxh3_64": older files
};

constexpr FileChecksumAlgorithm kFileChecksumAlgorithm = FileChecksumAlgorithm::kXxh3Blocks64k;
constexpr size_t kChecksumBlockBytes = size_t{64} << 10;

const char* algorithm_name(FileChecksumAlgorithm algorithm);
// nullopt for a name this version does not know.
std::optional<FileChecksumAlgorithm> parse_algorithm(const std::string& name);
// "\"xxh3_64_b64k\" or \"xxh3_64\"", for error messages.
std::string known_algorithm_names();

struct FileHash {
  uint64_t bytes = 0;
  uint64_t checksum = 0;  // of the whole content, by `algorithm`
  FileChecksumAlgorithm algorithm = kFileChecksumAlgorithm;
};

class BlockDigests;

// Size and checksum of the open file `fd` (`path` names it in errors) by `algorithm`, reading
// with pread every block whose digest `known` (null: none) lacks; a full read of a large file
// uses up to 4 threads. Throws kIOError naming the errno, or when the file shrinks meanwhile.
FileHash hash_open_file(int fd, const std::string& path, FileChecksumAlgorithm algorithm,
                        const BlockDigests* known);

// Digests of some of a file's 64 KiB blocks, known before the file is read back (its writer
// hashed them from the bytes it wrote). Block i covers [i * kChecksumBlockBytes, ...).
class BlockDigests {
 public:
  void set(uint64_t block, uint64_t digest);
  // Null when block's digest is not known.
  const uint64_t* find(uint64_t block) const;
  size_t known() const { return known_; }

 private:
  std::vector<uint64_t> digest_;
  std::vector<uint8_t> set_;
  size_t known_ = 0;
};

// Hashes the blocks of one region of a file -- [begin, end) in file offsets -- from the bytes
// written there, fed in file order in pieces of any size. Only blocks that lie wholly inside
// the region get a digest (the others hold bytes this feeder never sees); a piece that ends
// inside a block is kept (at most one block) until the next piece completes it.
class RegionBlockHasher {
 public:
  RegionBlockHasher(uint64_t begin, uint64_t end, BlockDigests* out);
  // The next `bytes` of the region. REQUIRES: no more than the region has left.
  void feed(const void* data, size_t bytes);

 private:
  uint64_t pos_;               // file offset of the next byte fed
  uint64_t first_full_, end_full_;  // file offsets: the wholly covered blocks are in between
  BlockDigests* out_;
  std::vector<uint8_t> partial_;  // bytes of the current block so far
};

// The checksum of a file's content from the digests of all its blocks, in order.
uint64_t combine_block_digests(const std::vector<uint64_t>& digests);

}  // namespace ddp::ckpt
