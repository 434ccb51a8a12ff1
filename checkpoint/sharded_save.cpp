#include "checkpoint/sharded_save.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>

#include <fmt/format.h>

#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_writer.h"
#include "checkpoint/share_records.h"
#include "collectives/agreement.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

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

// Rank 0's writer thread: creates the file, writes rank 0's own share, then every received
// round in order (each holds a piece of one rank's share), then closes the file. The
// gathering thread fills two GatherBuffers in turn;
// round k's buffer is reused for round k + 2 only after the writer is done with it.
// Every HDF5 call of the save happens on this thread. After a failure the thread stops
// writing but keeps releasing buffers, so the gathering thread never blocks on it.
class RootWriter {
 public:
  using Segments = std::vector<std::pair<const uint8_t*, size_t>>;

  RootWriter(std::string tmp, const CheckpointMeta& meta, Segments own, int world)
      : tmp_(std::move(tmp)), meta_(meta), own_(std::move(own)), world_(world) {
    thread_ = std::thread([this] { run(); });
  }
  ~RootWriter() { stop(); }

  // The buffer to receive round k into; waits until the writer has released it.
  GatherBuffer* acquire(int64_t k) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ || k - consumed_ < 2; });
    return &buffers_[k % 2];
  }
  // Round k is in its buffer.
  void filled(int64_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    filled_ = k + 1;
    cv_.notify_all();
  }
  // No more rounds: waits for the writer to close the file. Returns its failure, if any.
  std::exception_ptr finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      end_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    return failure_;
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      abort_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

  void run() {
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
        const GatherBuffer& b = buffers_[k % 2];
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
    } catch (...) {
      failure_ = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_all();
  }

  const std::string tmp_;
  const CheckpointMeta& meta_;
  const Segments own_;
  const int world_;
  GatherBuffer buffers_[2];
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t filled_ = 0, consumed_ = 0;  // rounds received / written
  bool end_ = false, abort_ = false, done_ = false;
  std::exception_ptr failure_;
  std::thread thread_;
};

}  // namespace

// The copies a defer_copies snapshot left for later, cut into pieces that finish()'s thread and
// the training thread (in complete_snapshot) take in turn, whoever comes first: the training
// thread never waits idle for a copy it could be doing itself.
// Thread-safety: add() before the PendingSave is handed out; run() from any threads.
struct PendingSave::DeferredCopies {
  struct Piece {
    uint8_t* dst;
    const uint8_t* src;
    size_t bytes;
  };
  static constexpr size_t kPieceBytes = 4u << 20;  // small enough to share, big enough to stream

  void add(uint8_t* dst, const void* src, size_t bytes, const TensorSource& owner) {
    const auto* from = static_cast<const uint8_t*>(src);
    for (size_t off = 0; off < bytes; off += kPieceBytes) {
      pieces.push_back({dst + off, from + off, std::min(kPieceBytes, bytes - off)});
    }
    owners.push_back(owner);
  }

  // Copies pieces until none is left to take, then waits for those other threads are copying.
  void run() {
    size_t copied = 0;
    double started = 0;
    for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
      if (copied == 0) started = now_s();
      std::memcpy(pieces[i].dst, pieces[i].src, pieces[i].bytes);
      ++copied;
    }
    std::unique_lock<std::mutex> lock(mu);
    if (copied > 0) {
      first_s = first_s == 0 ? started : std::min(first_s, started);
      done += copied;
      if (done == pieces.size()) {
        last_s = now_s();
        cv.notify_all();
      }
    }
    cv.wait(lock, [&] { return done == pieces.size(); });
  }

  // Seconds from the first piece started to the last one done (on whichever threads).
  double seconds() {
    std::lock_guard<std::mutex> lock(mu);
    return done == pieces.size() && !pieces.empty() ? last_s - first_s : 0.0;
  }

  // REQUIRES: run() has returned on some thread (every piece is copied).
  void release_owners() {
    std::lock_guard<std::mutex> lock(mu);
    owners.clear();
  }

  std::vector<Piece> pieces;         // fixed once the PendingSave is handed out
  std::vector<TensorSource> owners;  // keep the sources' memory alive until copied
  std::atomic<size_t> next{0};       // next piece to take
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;                   // pieces copied; guarded by mu
  double first_s = 0, last_s = 0;    // guarded by mu
};

SnapshotBuffer::~SnapshotBuffer() { release(); }

void SnapshotBuffer::release() {
  if (data_ && on_release) on_release(data_.get());
  data_.reset();
  capacity_ = 0;
}

uint8_t* SnapshotBuffer::reserve(size_t bytes) {
  if (bytes > capacity_) {
    release();  // never hold the old and the new storage together
    data_.reset(new uint8_t[bytes]);
    capacity_ = bytes;
    if (on_allocate) on_allocate(data_.get(), bytes);
  }
  return data_.get();
}

std::vector<int> assign_shares(const std::vector<TensorSource>& tensors, int world_size) {
  // Largest first onto the least-loaded rank; ties by index, so every rank agrees.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tensors[a].bytes > tensors[b].bytes; });
  std::vector<uint64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (size_t i : order) {
    const auto r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[static_cast<size_t>(r)] += tensors[i].bytes;
  }
  return owner;
}

std::unique_ptr<PendingSave> snapshot_for_save(Communicator& comm, SaveRequest request) {
  const double t0 = now_s();
  auto pending = std::unique_ptr<PendingSave>(new PendingSave());
  const auto owner = assign_shares(request.tensors, comm.size());
  const bool root = comm.rank() == 0;
  auto in_place = [&](const TensorSource& t) {
    return request.zero_copy && t.host_data != nullptr;
  };
  auto deferred_copy = [&](const TensorSource& t) {
    return request.defer_copies && t.changes_only_at_update && t.host_data != nullptr;
  };
  auto deferred = std::make_shared<PendingSave::DeferredCopies>();

  size_t total = 0;
  for (size_t i = 0; i < request.tensors.size(); ++i) {
    if (owner[i] != comm.rank()) continue;
    const TensorSource& t = request.tensors[i];
    total += kPrefixBytes + tensor_header_bytes(t) + 8 + (in_place(t) ? 0 : t.bytes);
  }
  const RankState& rs = request.rank_state;
  total += kPrefixBytes + 8 + rank_payload_bytes(rs);

  auto buffer = request.buffer ? request.buffer : std::make_shared<SnapshotBuffer>();
  uint8_t* base = buffer->reserve(total);
  Cursor out(base);
  size_t segment_start = 0;
  auto& stream = pending->stream_;
  for (size_t i = 0; i < request.tensors.size(); ++i) {
    if (owner[i] != comm.rank()) continue;
    const TensorSource& src = request.tensors[i];
    out.put<uint8_t>(kTensorRecord);
    out.put<uint32_t>(static_cast<uint32_t>(tensor_header_bytes(src)));
    out.put<uint64_t>(src.path.size());
    out.put_raw(src.path.data(), src.path.size());
    out.put<uint8_t>(static_cast<uint8_t>(src.dtype));
    out.put<uint32_t>(static_cast<uint32_t>(src.shape.size()));
    for (int64_t d : src.shape) out.put<int64_t>(d);
    const size_t slot = out.pos();
    out.put<uint64_t>(0);
    out.put<uint64_t>(src.bytes);
    if (in_place(src)) {
      if (!root) pending->checksums_.push_back({slot, static_cast<const uint8_t*>(src.host_data),
                                                src.bytes, stream.size()});
      stream.push_back({base + segment_start, out.pos() - segment_start});
      if (src.bytes) stream.push_back({static_cast<const uint8_t*>(src.host_data), src.bytes});
      segment_start = out.pos();
    } else {
      if (src.bytes > 0 && deferred_copy(src)) {
        deferred->add(base + out.pos(), src.host_data, src.bytes, src);
      } else if (src.bytes > 0) {
        src.copy_to(base + out.pos());
      }
      if (!root) pending->checksums_.push_back({slot, base + out.pos(), src.bytes, stream.size()});
      out.skip(src.bytes);
    }
  }
  out.put<uint8_t>(kRankRecord);
  out.put<uint32_t>(0);
  out.put<uint64_t>(rank_payload_bytes(rs));
  out.put<int64_t>(rs.rank);
  out.put<int64_t>(rs.sampler_epoch);
  out.put<int64_t>(rs.sampler_index);
  out.put<uint64_t>(rs.cpu_rng.size());
  out.put_raw(rs.cpu_rng.data(), rs.cpu_rng.size());
  out.put<uint64_t>(rs.cuda_rng.size());
  out.put_raw(rs.cuda_rng.data(), rs.cuda_rng.size());
  stream.push_back({base + segment_start, out.pos() - segment_start});
  if (out.pos() != total) {
    throw Error(ErrorKind::kInternal,
                fmt::format("snapshot_for_save: wrote {} bytes, sized {}", out.pos(), total));
  }

  // The sources reference live tensors; the pending save must not touch them again, except
  // through host_data under zero_copy: those sources stay alive until finish() is done (their
  // copy_to may own the memory host_data points into, e.g. a tensor made for the save).
  if (!stream.empty() && request.zero_copy) pending->keep_alive_ = std::move(request.tensors);
  request.tensors.clear();
  request.buffer.reset();
  pending->request_ = std::move(request);
  pending->buffer_ = std::move(buffer);
  pending->base_ = base;
  if (!deferred->pieces.empty()) pending->deferred_ = std::move(deferred);
  pending->snapshot_s_ = now_s() - t0;
  return pending;
}

PendingSave::~PendingSave() = default;

void PendingSave::complete_snapshot() {
  if (deferred_) deferred_->run();
}

SaveResult PendingSave::finish(Communicator& comm, FileSystem& fs) {
  const double t0 = now_s();
  // The snapshot first: nothing below may read a share before its copies are done.
  if (deferred_) {
    deferred_->run();
    deferred_->release_owners();
  }
  const int world = comm.size();
  const bool root = comm.rank() == 0;
  const size_t chunk = std::max<size_t>(request_.chunk_bytes, 1);

  // Rank 0 starts writing its own share at once, before waiting for anyone.
  std::exception_ptr failure;
  std::unique_ptr<RootWriter> writer;
  const std::string tmp = root ? temp_path_for(request_.final_path) : std::string();
  if (root) {
    RootWriter::Segments own;
    for (const Segment& s : stream_) own.emplace_back(s.data, s.bytes);
    writer = std::make_unique<RootWriter>(tmp, request_.meta, std::move(own), world);
  }

  // This rank's rounds (ranks other than 0): pieces of at most `chunk` bytes, each within one
  // segment of stream_ (contiguous memory: the snapshot, or a tensor read in place).
  struct Round {
    const uint8_t* data;
    size_t bytes;
    size_t segment;
  };
  std::vector<Round> rounds;
  if (!root) {
    for (size_t seg = 0; seg < stream_.size(); ++seg) {
      for (size_t off = 0; off < stream_[seg].bytes; off += chunk) {
        rounds.push_back({stream_[seg].data + off, std::min(chunk, stream_[seg].bytes - off), seg});
      }
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(world));
  const auto mine = static_cast<int64_t>(rounds.size());
  comm.all_gather(&mine, counts.data(), 1, DType::kInt64);
  // One sender per round: rank 1's whole share, then rank 2's, ... so that the file is
  // written one tensor at a time and rank 0 receives one chunk per round (not one per rank).
  // A segment's checksums (of tensors whose header it holds) are computed just before its
  // first round goes out: off the training thread for an async save, and for a synchronous
  // one overlapped with rank 0 writing what it already has.
  // Rank 0 keeps taking part in every round even after a local failure, so that the
  // collective sequence stays the same on all ranks; the failure is agreed on at the end.
  int64_t k = 0;
  size_t next_sum = 0;
  for (int sender = 1; sender < world; ++sender) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(sender)]; ++i, ++k) {
      if (root) {
        GatherBuffer* buf = writer->acquire(k);
        comm.gather_bytes_into(nullptr, 0, 0, buf);
        writer->filled(k);
      } else if (sender == comm.rank()) {
        const Round& r = rounds[static_cast<size_t>(i)];
        for (; next_sum < checksums_.size() && checksums_[next_sum].segment <= r.segment;
             ++next_sum) {
          const ChecksumSlot& c = checksums_[next_sum];
          const uint64_t sum = checksum_bytes(c.data, c.bytes);
          std::memcpy(base_ + c.slot, &sum, sizeof(sum));
        }
        comm.gather_bytes_into(r.data, r.bytes, 0, nullptr);
      } else {
        comm.gather_bytes_into(nullptr, 0, 0, nullptr);
      }
    }
  }
  if (root) {
    failure = writer->finish();
    writer.reset();
  }
  stream_.clear();
  keep_alive_.clear();
  buffer_.reset();  // the caller's SnapshotBuffer stays allocated for the next save

  SaveResult result;
  if (root && !failure) {
    try {
      const CommitInfo info = commit_checkpoint(fs, tmp, request_.final_path,
                                                request_.meta.global_step,
                                                request_.update_latest);
      result.bytes = info.bytes;
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (root && failure) {
    try {
      if (fs.exists(tmp)) fs.remove(tmp);
    } catch (...) {
    }
  }
  run_agreed(comm, fmt::format("checkpoint save at step {}", request_.meta.global_step), [&] {
    if (failure) std::rethrow_exception(failure);
  });
  int64_t bytes = static_cast<int64_t>(result.bytes);
  comm.broadcast(&bytes, 1, DType::kInt64, 0);
  result.bytes = static_cast<uint64_t>(bytes);
  result.file = request_.final_path;
  result.global_step = request_.meta.global_step;
  result.snapshot_s = snapshot_s_;
  result.deferred_copy_s = deferred_ ? deferred_->seconds() : 0.0;
  result.write_s = now_s() - t0;
  return result;
}

}  // namespace ddp::ckpt
