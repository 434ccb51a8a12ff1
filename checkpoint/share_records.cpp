#include "checkpoint/share_records.h"

#include <algorithm>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

// Reads one header or rank payload (complete, in memory).
class Reader {
 public:
  Reader(const uint8_t* p, size_t n, const char* what) : p_(p), n_(n), what_(what) {}
  template <typename T>
  T get() {
    T v;
    need(sizeof(T));
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::vector<uint8_t> get_bytes() {
    const auto len = get<uint64_t>();
    need(len);
    std::vector<uint8_t> out(p_ + pos_, p_ + pos_ + len);
    pos_ += static_cast<size_t>(len);
    return out;
  }
  void expect_end() const {
    if (pos_ != n_) corrupt("trailing bytes");
  }

 private:
  void need(uint64_t k) const {
    if (n_ - pos_ < k) corrupt("truncated");
  }
  [[noreturn]] void corrupt(const char* why) const {
    throw Error(ErrorKind::kInternal,
                fmt::format("checkpoint gather: corrupt {} record ({})", what_, why));
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const char* what_;
};

}  // namespace

void RecordStream::feed(const uint8_t* p, size_t n) {
  while (n > 0) {
    if (state_ == kPayload) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(n, payload_left_));
      writer_->append_tensor_data(p, take);
      p += take;
      n -= take;
      payload_left_ -= take;
      if (payload_left_ == 0) end_tensor();
      continue;
    }
    const size_t take = std::min(n, want_ - pending_.size());
    pending_.insert(pending_.end(), p, p + take);
    p += take;
    n -= take;
    if (pending_.size() == want_) advance();
  }
}

void RecordStream::check_complete() const {
  if (state_ != kPrefix || !pending_.empty()) {
    throw Error(ErrorKind::kInternal,
                fmt::format("checkpoint gather: rank {}'s share ended inside a record",
                            source_rank_));
  }
}

void RecordStream::advance() {
  switch (state_) {
    case kPrefix: {
      std::memcpy(&kind_, pending_.data(), 1);
      uint32_t header_len;
      std::memcpy(&header_len, pending_.data() + 1, 4);
      if ((kind_ != kTensorRecord && kind_ != kRankRecord) || header_len > kMaxHeaderBytes) {
        throw Error(ErrorKind::kInternal,
                    fmt::format("checkpoint gather: corrupt record stream from rank {}",
                                source_rank_));
      }
      start(kHeader, size_t{header_len} + 8);
      break;
    }
    case kHeader: {
      uint64_t payload;
      std::memcpy(&payload, pending_.data() + pending_.size() - 8, 8);
      if (kind_ == kTensorRecord) {
        begin_tensor(payload);
      } else {
        if (payload > kMaxRankPayload) {
          throw Error(ErrorKind::kInternal, "checkpoint gather: corrupt rank record");
        }
        start(kRankPayload, static_cast<size_t>(payload));
        if (want_ == 0) advance();
      }
      break;
    }
    case kRankPayload: {
      Reader in(pending_.data(), pending_.size(), "rank");
      RankState r;
      r.rank = in.get<int64_t>();
      r.sampler_epoch = in.get<int64_t>();
      r.sampler_index = in.get<int64_t>();
      r.cpu_rng = in.get_bytes();
      r.cuda_rng = in.get_bytes();
      in.expect_end();
      if (!weights_only_) writer_->add_rank_state(r);
      start(kPrefix, kPrefixBytes);
      break;
    }
    case kPayload:
      break;
  }
}

void RecordStream::begin_tensor(uint64_t payload) {
  Reader in(pending_.data(), pending_.size() - 8, "tensor");
  const std::vector<uint8_t> path = in.get_bytes();
  const auto dtype = in.get<uint8_t>();
  const auto ndim = in.get<uint32_t>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < ndim; ++i) shape.push_back(in.get<int64_t>());
  const auto checksum = in.get<uint64_t>();
  in.expect_end();
  // Another rank hashed the tensor at its source just before sending it: rank 0 stores that
  // checksum instead of hashing the bytes a second time on the save's critical path (every
  // load verifies it). Rank 0's own tensors arrive without one and are hashed as written.
  writer_->begin_tensor(std::string(path.begin(), path.end()), static_cast<DType>(dtype),
                        shape, checksum,
                        source_rank_ == 0 ? FileWriter::Checksum::kVerify
                                          : FileWriter::Checksum::kStore);
  payload_left_ = payload;
  pending_.clear();
  state_ = kPayload;
  want_ = 0;
  if (payload_left_ == 0) end_tensor();
}

void RecordStream::end_tensor() {
  writer_->end_tensor();
  start(kPrefix, kPrefixBytes);
}

void RecordStream::start(State s, size_t want) {
  state_ = s;
  want_ = want;
  pending_.clear();
}

}  // namespace ddp::ckpt
