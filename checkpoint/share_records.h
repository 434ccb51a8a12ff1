// The record stream in which a rank's checkpoint share travels to rank 0 (sharded_save.cpp):
// its layout, a writer cursor, and the incremental parser that streams records into a
// FileWriter. Internal to checkpoint/; both ends are ranks of one job built from one binary.
//
// A rank's share travels as records back to back, in host byte order (both ends are ranks of
// one job, built from one binary):
//   record  = kind:u8  header_len:u32  header  payload_len:u64  payload
//   tensor  : header = path_len:u64 path  dtype:u8  ndim:u32  dims:i64[ndim]  checksum:u64
//             payload = the tensor's bytes (row-major); checksum 0 = not computed
//   rank    : header empty; payload = rank:i64 sampler_epoch:i64 sampler_index:i64
//             cpu_rng_len:u64 cpu_rng  cuda_rng_len:u64 cuda_rng
// Only the tensor payload is large; it streams into the file in whatever pieces arrive.
//
// Thread-safety: none; one RecordStream per source rank, used by one thread.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/format_writer.h"
#include "checkpoint/sharded_save.h"

namespace ddp::ckpt {

enum RecordKind : uint8_t { kTensorRecord = 0, kRankRecord = 1 };
constexpr size_t kPrefixBytes = 1 + 4;
constexpr uint32_t kMaxHeaderBytes = 1u << 20;  // a path and a shape: far less in practice
constexpr uint64_t kMaxRankPayload = 1u << 30;

inline size_t tensor_header_bytes(const TensorSource& t) {
  return 8 + t.path.size() + 1 + 4 + 8 * t.shape.size() + 8;
}

inline size_t rank_payload_bytes(const RankState& r) {
  return 3 * 8 + 8 + r.cpu_rng.size() + 8 + r.cuda_rng.size();
}

// Writes into preallocated memory.
class Cursor {
 public:
  explicit Cursor(uint8_t* base) : base_(base) {}
  template <typename T>
  void put(const T& v) {
    std::memcpy(base_ + pos_, &v, sizeof(T));
    pos_ += sizeof(T);
  }
  void put_raw(const void* data, size_t n) {
    if (n) std::memcpy(base_ + pos_, data, n);
    pos_ += n;
  }
  size_t pos() const { return pos_; }
  void skip(size_t n) { pos_ += n; }

 private:
  uint8_t* base_;
  size_t pos_ = 0;
};

// Parses one rank's record stream, fed in pieces split anywhere, into a FileWriter. Tensor
// payloads go to the writer straight from the caller's memory; only headers and rank records
// (small) are accumulated. Throws ddp::Error(kInternal) on a malformed stream.
class RecordStream {
 public:
  RecordStream(FileWriter* writer, bool weights_only, int source_rank)
      : writer_(writer), weights_only_(weights_only), source_rank_(source_rank) {}

  void feed(const uint8_t* p, size_t n);
  // REQUIRES: the whole stream was fed. Throws if it stopped inside a record.
  void check_complete() const;

 private:
  enum State { kPrefix, kHeader, kPayload, kRankPayload };
  void advance();
  void begin_tensor(uint64_t payload);
  void end_tensor();
  void start(State s, size_t want);

  FileWriter* writer_;
  bool weights_only_;
  int source_rank_;
  State state_ = kPrefix;
  size_t want_ = kPrefixBytes;
  std::vector<uint8_t> pending_;
  uint8_t kind_ = 0;
  uint64_t payload_left_ = 0;
};

}  // namespace ddp::ckpt
