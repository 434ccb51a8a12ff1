#include "checkpoint/root_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "checkpoint/format_writer.h"
#include "checkpoint/share_records.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

// Asks the kernel to start writing the file's dirty pages to disk now, without waiting
// (sync_file_range SYNC_FILE_RANGE_WRITE; RocksDB's bytes_per_sync): the disk works while the
// next round is received, and the commit's fsync has less left to wait for. A hint only:
// errors are ignored (durability still comes from that fsync).
class EarlyWriteback {
 public:
  explicit EarlyWriteback(const std::string& path) {
#if defined(__linux__)
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
#else
    (void)path;
#endif
  }
  ~EarlyWriteback() {
    if (fd_ >= 0) ::close(fd_);
  }
  EarlyWriteback(const EarlyWriteback&) = delete;
  EarlyWriteback& operator=(const EarlyWriteback&) = delete;
  void start() {
#if defined(__linux__)
    if (fd_ >= 0) (void)::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
    since_start_ = 0;
  }
  // `bytes` more were written: starts writeback every kEvery bytes.
  void wrote(size_t bytes) {
    since_start_ += bytes;
    if (since_start_ >= kEvery) start();
  }

 private:
  static constexpr size_t kEvery = 8u << 20;
  int fd_ = -1;
  size_t since_start_ = 0;
};

}  // namespace

RootWriter::RootWriter(std::string tmp, const CheckpointMeta& meta, Segments own, int world,
                       std::vector<size_t> round_bytes, size_t ring_bytes)
    : tmp_(std::move(tmp)),
      meta_(meta),
      own_(std::move(own)),
      world_(world),
      round_bytes_(std::move(round_bytes)) {
  const size_t total = std::accumulate(round_bytes_.begin(), round_bytes_.end(), size_t{0});
  const size_t largest =
      round_bytes_.empty() ? 0 : *std::max_element(round_bytes_.begin(), round_bytes_.end());
  if (largest > ring_bytes) {
    throw Error(ErrorKind::kInternal,
                fmt::format("RootWriter: a round of {} bytes exceeds the ring of {}", largest,
                            ring_bytes));
  }
  ring_bytes_ = std::min(ring_bytes, total);  // a share smaller than the ring: no wrap-around
  if (ring_bytes_ > 0) ring_.reset(new uint8_t[ring_bytes_]);
  // Each round takes the next stretch after the previous one, or the ring's start when it
  // would run past the end (the tail is left unused for that lap).
  round_pos_.resize(round_bytes_.size());
  slots_.resize(round_bytes_.size());
  size_t head = 0;
  for (size_t k = 0; k < round_bytes_.size(); ++k) {
    if (head + round_bytes_[k] > ring_bytes_) head = 0;
    round_pos_[k] = head;
    slots_[k].use_memory(ring_.get() + head, round_bytes_[k]);
    head += round_bytes_[k];
  }
  thread_ = std::thread([this] { run(); });
}

RootWriter::~RootWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

bool RootWriter::overlaps_unconsumed(int64_t k) const {
  const size_t lo = round_pos_[static_cast<size_t>(k)];
  const size_t hi = lo + round_bytes_[static_cast<size_t>(k)];
  for (int64_t j = consumed_; j < k; ++j) {
    const size_t jlo = round_pos_[static_cast<size_t>(j)];
    const size_t jhi = jlo + round_bytes_[static_cast<size_t>(j)];
    if (lo < jhi && jlo < hi) return true;
  }
  return false;
}

GatherBuffer* RootWriter::acquire(int64_t k) {
  if (k < 0 || static_cast<size_t>(k) >= slots_.size()) {
    throw Error(ErrorKind::kInternal,
                fmt::format("RootWriter: round {} of {} acquired", k, slots_.size()));
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ || !overlaps_unconsumed(k); });
  return &slots_[static_cast<size_t>(k)];
}

void RootWriter::filled(int64_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  filled_ = k + 1;
  cv_.notify_all();
}

std::exception_ptr RootWriter::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    end_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  return failure_;
}

void RootWriter::run() {
  try {
    FileWriter writer(tmp_, meta_);
    EarlyWriteback writeback(tmp_);
    RecordStream own(&writer, meta_.weights_only, 0);
    for (const auto& [p, n] : own_) {
      own.feed(p, n);
      writeback.wrote(n);
    }
    own.check_complete();
    std::vector<RecordStream> remote;
    for (int r = 0; r < world_; ++r) remote.emplace_back(&writer, meta_.weights_only, r);
    for (int64_t k = 0;; ++k) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return abort_ || filled_ > k || end_; });
        if (abort_) return;
        if (filled_ <= k) break;  // end_ and every round written
      }
      const GatherBuffer& b = slots_[static_cast<size_t>(k)];
      for (int r = 1; r < world_; ++r) {
        remote[r].feed(b.of(r), b.size[static_cast<size_t>(r)]);
        writeback.wrote(b.size[static_cast<size_t>(r)]);
      }
      std::lock_guard<std::mutex> lock(mu_);
      consumed_ = k + 1;
      cv_.notify_all();
    }
    for (int r = 1; r < world_; ++r) remote[r].check_complete();
    writer.close();
    digests_ = writer.block_digests();
  } catch (...) {
    failure_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mu_);
  done_ = true;
  cv_.notify_all();
}

}  // namespace ddp::ckpt
