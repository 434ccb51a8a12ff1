#include "checkpoint/file_checksum.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

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

}  // namespace ddp::ckpt
