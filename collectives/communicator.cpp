#include "collectives/communicator.h"

#include <cstring>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {

uint8_t* GatherBuffer::reserve(size_t bytes) {
  if (bytes > capacity_) {
    if (external_) {
      throw Error(ErrorKind::kInternal,
                  fmt::format("GatherBuffer: {} bytes to receive into caller memory of {}",
                              bytes, capacity_));
    }
    owned_.reset();  // free first: never hold the old and the new storage together
    owned_.reset(new uint8_t[bytes]);
    memory_ = owned_.get();
    capacity_ = bytes;
  }
  return memory_;
}

void GatherBuffer::use_memory(uint8_t* memory, size_t capacity) {
  owned_.reset();
  memory_ = memory;
  capacity_ = capacity;
  external_ = true;
}

std::vector<std::vector<uint8_t>> Communicator::gather_bytes(const void* data, size_t bytes,
                                                             int root) {
  GatherBuffer buf;
  gather_bytes_into(data, bytes, root, rank() == root ? &buf : nullptr);
  std::vector<std::vector<uint8_t>> out;
  if (rank() != root) return out;
  out.resize(static_cast<size_t>(size()));
  for (int r = 0; r < size(); ++r) {
    out[r].assign(buf.of(r), buf.of(r) + buf.size[static_cast<size_t>(r)]);
  }
  return out;
}

std::string broadcast_string(Communicator& comm, const std::string& value, int root) {
  int64_t len = comm.rank() == root ? static_cast<int64_t>(value.size()) : 0;
  comm.broadcast(&len, 1, DType::kInt64, root);
  std::string out = comm.rank() == root ? value : std::string(static_cast<size_t>(len), '\0');
  if (len > 0) comm.broadcast(out.data(), static_cast<size_t>(len), DType::kUInt8, root);
  return out;
}

std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& value) {
  const auto world = static_cast<size_t>(comm.size());
  int64_t mine = static_cast<int64_t>(value.size());
  std::vector<int64_t> lengths(world);
  comm.all_gather(&mine, lengths.data(), 1, DType::kInt64);
  std::vector<size_t> counts(lengths.begin(), lengths.end());
  size_t total = 0, offset = 0;
  for (size_t r = 0; r < world; ++r) {
    if (r == static_cast<size_t>(comm.rank())) offset = total;
    total += counts[r];
  }
  std::string all(total, '\0');
  if (!value.empty()) std::memcpy(all.data() + offset, value.data(), value.size());
  comm.all_gather_into(all.data(), counts, DType::kUInt8);
  std::vector<std::string> out;
  for (size_t r = 0, at = 0; r < world; at += counts[r], ++r) {
    out.push_back(all.substr(at, counts[r]));
  }
  return out;
}

}  // namespace ddp
