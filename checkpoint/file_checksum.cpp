#include "checkpoint/file_checksum.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <future>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "checkpoint/file_system.h"  // throw_errno
#include "checkpoint/xxh3.h"
#include "collectives/error.h"

namespace ddp::ckpt {

const char* algorithm_name(FileChecksumAlgorithm algorithm) {
  switch (algorithm) {
    case FileChecksumAlgorithm::kXxh3Blocks64k: return "xxh3_64_b64k";
    case FileChecksumAlgorithm::kXxh3Whole: return "xxh3_64";
  }
  return "unknown";
}

std::optional<FileChecksumAlgorithm> parse_algorithm(const std::string& name) {
  for (auto a : {FileChecksumAlgorithm::kXxh3Blocks64k, FileChecksumAlgorithm::kXxh3Whole}) {
    if (name == algorithm_name(a)) return a;
  }
  return std::nullopt;
}

std::string known_algorithm_names() {
  return fmt::format("\"{}\" or \"{}\"", algorithm_name(FileChecksumAlgorithm::kXxh3Blocks64k),
                     algorithm_name(FileChecksumAlgorithm::kXxh3Whole));
}

void BlockDigests::set(uint64_t block, uint64_t digest) {
  if (block >= digest_.size()) {
    const size_t n = std::max<size_t>(static_cast<size_t>(block) + 1, 2 * digest_.size());
    digest_.resize(n, 0);
    set_.resize(n, 0);
  }
  if (!set_[block]) ++known_;
  set_[block] = 1;
  digest_[block] = digest;
}

const uint64_t* BlockDigests::find(uint64_t block) const {
  return block < set_.size() && set_[block] ? &digest_[block] : nullptr;
}

RegionBlockHasher::RegionBlockHasher(uint64_t begin, uint64_t end, BlockDigests* out)
    : pos_(begin), out_(out) {
  const uint64_t b = kChecksumBlockBytes;
  first_full_ = (begin + b - 1) / b * b;
  end_full_ = std::max(first_full_, end / b * b);
}

void RegionBlockHasher::feed(const void* data, size_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint64_t b = kChecksumBlockBytes;
  while (bytes > 0) {
    if (pos_ < first_full_ || pos_ >= end_full_) {  // a block shared with bytes not fed here
      const uint64_t stop = pos_ < first_full_ ? first_full_ : UINT64_MAX;
      const size_t skip = static_cast<size_t>(std::min<uint64_t>(bytes, stop - pos_));
      p += skip;
      bytes -= skip;
      pos_ += skip;
      continue;
    }
    const size_t in_block = static_cast<size_t>(pos_ % b);
    if (in_block == 0 && partial_.empty() && bytes >= b) {  // whole blocks straight from `data`
      out_->set(pos_ / b, XXH3_64bits(p, b));
      p += b;
      bytes -= b;
      pos_ += b;
      continue;
    }
    const size_t take = std::min(bytes, static_cast<size_t>(b) - in_block);
    partial_.insert(partial_.end(), p, p + take);
    p += take;
    bytes -= take;
    pos_ += take;
    if (partial_.size() == b) {
      out_->set((pos_ - 1) / b, XXH3_64bits(partial_.data(), partial_.size()));
      partial_.clear();
    }
  }
}

uint64_t combine_block_digests(const std::vector<uint64_t>& digests) {
  std::vector<uint8_t> le(digests.size() * 8);
  for (size_t i = 0; i < digests.size(); ++i) {
    for (int k = 0; k < 8; ++k) le[i * 8 + k] = static_cast<uint8_t>(digests[i] >> (8 * k));
  }
  return XXH3_64bits(le.data(), le.size());
}

namespace {

// pread of exactly `size` bytes at `offset`; a file shorter than that is an error (it changed
// while it was hashed).
void pread_all(int fd, uint8_t* dst, size_t size, uint64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, dst, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path, errno);
    }
    if (n == 0) {
      throw Error(ErrorKind::kIOError,
                  fmt::format("read '{}': the file ended at {} bytes while it was hashed "
                              "(changed underneath?)", path, offset));
    }
    dst += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// Digests of blocks [first, last) of a file of `size` bytes into digests[first..last), skipping
// those `known` holds; reads runs of unknown blocks in pieces of up to 4 MiB.
void hash_blocks(int fd, uint64_t size, uint64_t first, uint64_t last, const BlockDigests* known,
                 std::vector<uint64_t>& digests, const std::string& path) {
  constexpr uint64_t kReadBlocks = (4u << 20) / kChecksumBlockBytes;
  std::unique_ptr<uint8_t[]> buf;
  for (uint64_t i = first; i < last;) {
    if (known) {
      if (const uint64_t* d = known->find(i)) {
        digests[i++] = *d;
        continue;
      }
    }
    uint64_t run_end = i + 1;  // unknown blocks i .. run_end - 1, read together
    while (run_end < last && run_end - i < kReadBlocks && !(known && known->find(run_end))) {
      ++run_end;
    }
    const uint64_t offset = i * kChecksumBlockBytes;
    const auto bytes = static_cast<size_t>(std::min(size, run_end * kChecksumBlockBytes) - offset);
    if (!buf) buf.reset(new uint8_t[kReadBlocks * kChecksumBlockBytes]);
    pread_all(fd, buf.get(), bytes, offset, path);
    for (uint64_t j = i; j < run_end; ++j) {
      const size_t at = static_cast<size_t>((j - i) * kChecksumBlockBytes);
      digests[j] = XXH3_64bits(buf.get() + at, std::min(kChecksumBlockBytes, bytes - at));
    }
    i = run_end;
  }
}

FileHash hash_whole_stream(int fd, const std::string& path) {
  constexpr size_t kBlock = 4u << 20;  // large sequential reads, small resident buffer
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(XXH3_createState(),
                                                                         &XXH3_freeState);
  if (!state) throw Error(ErrorKind::kInternal, "XXH3_createState failed (out of memory)");
  XXH3_64bits_reset(state.get());
  std::unique_ptr<char[]> buf(new char[kBlock]);
  FileHash out;
  out.algorithm = FileChecksumAlgorithm::kXxh3Whole;
  while (true) {
    const ssize_t n = ::read(fd, buf.get(), kBlock);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path, errno);
    }
    if (n == 0) break;
    XXH3_64bits_update(state.get(), buf.get(), static_cast<size_t>(n));
    out.bytes += static_cast<uint64_t>(n);
  }
  out.checksum = XXH3_64bits_digest(state.get());
  return out;
}

}  // namespace

FileHash hash_open_file(int fd, const std::string& path, FileChecksumAlgorithm algorithm,
                        const BlockDigests* known) {
  if (algorithm == FileChecksumAlgorithm::kXxh3Whole) return hash_whole_stream(fd, path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("stat", path, errno);
  const auto size = static_cast<uint64_t>(st.st_size);
  const uint64_t blocks = (size + kChecksumBlockBytes - 1) / kChecksumBlockBytes;
  std::vector<uint64_t> digests(static_cast<size_t>(blocks));
  // A file read in full (a load's verification) is hashed by up to 4 threads, one stretch of
  // blocks each: reading from the page cache and hashing are both CPU work.
  const uint64_t unknown = blocks - (known ? std::min<uint64_t>(known->known(), blocks) : 0);
  const unsigned threads =
      unknown * kChecksumBlockBytes >= (64u << 20)
          ? std::max(1u, std::min(4u, std::thread::hardware_concurrency()))
          : 1u;
  std::vector<std::future<void>> helpers;
  const uint64_t per = (blocks + threads - 1) / threads;
  for (unsigned t = 1; t < threads; ++t) {
    const uint64_t lo = std::min(blocks, t * per), hi = std::min(blocks, lo + per);
    helpers.push_back(std::async(std::launch::async, [&, lo, hi] {
      hash_blocks(fd, size, lo, hi, known, digests, path);
    }));
  }
  std::exception_ptr failure;
  try {
    hash_blocks(fd, size, 0, std::min(blocks, per), known, digests, path);
  } catch (...) {
    failure = std::current_exception();
  }
  for (auto& h : helpers) {  // every helper joins before `digests` and `fd` go away
    try {
      h.get();
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  FileHash out;
  out.bytes = size;
  out.checksum = combine_block_digests(digests);
  out.algorithm = FileChecksumAlgorithm::kXxh3Blocks64k;
  return out;
}

}  // namespace ddp::ckpt
