#include "checkpoint/sharded_save.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>

#include <fmt/format.h>

#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/root_writer.h"
#include "checkpoint/share_records.h"
#include "collectives/agreement.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

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

std::vector<int> assign_shares(const std::vector<TensorSource>& tensors, int world_size,
                               const std::vector<int>& share_ranks) {
  std::vector<int> ranks = share_ranks;
  if (ranks.empty()) {
    ranks.resize(static_cast<size_t>(world_size));
    std::iota(ranks.begin(), ranks.end(), 0);
  }
  std::sort(ranks.begin(), ranks.end());
  if (ranks.front() != 0 || ranks.back() >= world_size ||
      std::adjacent_find(ranks.begin(), ranks.end()) != ranks.end()) {
    throw Error(ErrorKind::kInternal,
                fmt::format("assign_shares: share ranks must be distinct, include 0 and lie in "
                            "[0, {})",
                            world_size));
  }
  // Largest first onto the least-loaded rank; ties by index, so every rank agrees.
  std::vector<size_t> order;
  std::vector<uint64_t> load(ranks.size(), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int fixed = tensors[i].owner;
    if (fixed < 0) {
      order.push_back(i);
      continue;
    }
    if (fixed >= world_size) {
      throw Error(ErrorKind::kInternal,
                  fmt::format("assign_shares: '{}' is owned by rank {} of {}", tensors[i].path,
                              fixed, world_size));
    }
    owner[i] = fixed;
    const auto at = std::lower_bound(ranks.begin(), ranks.end(), fixed);
    if (at != ranks.end() && *at == fixed) {
      load[static_cast<size_t>(at - ranks.begin())] += tensors[i].bytes;
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tensors[a].bytes > tensors[b].bytes; });
  for (size_t i : order) {
    const auto k = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = ranks[k];
    load[k] += tensors[i].bytes;
  }
  return owner;
}

std::unique_ptr<PendingSave> snapshot_for_save(Communicator& comm, SaveRequest request) {
  const double t0 = now_s();
  auto pending = std::unique_ptr<PendingSave>(new PendingSave());
  const auto owner = assign_shares(request.tensors, comm.size(), request.share_ranks);
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
                                                src.bytes});
      stream.push_back({base + segment_start, out.pos() - segment_start});
      if (src.bytes) stream.push_back({static_cast<const uint8_t*>(src.host_data), src.bytes});
      segment_start = out.pos();
    } else {
      if (src.bytes > 0 && deferred_copy(src)) {
        deferred->add(base + out.pos(), src.host_data, src.bytes, src);
      } else if (src.bytes > 0) {
        src.copy_to(base + out.pos());
      }
      if (!root) pending->checksums_.push_back({slot, base + out.pos(), src.bytes});
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

  // This rank's rounds (ranks other than 0): each segment of stream_ (contiguous memory: the
  // snapshot, or a tensor read in place) is cut into the fewest rounds of at most half a
  // chunk, of equal size (a 16 MiB tensor as 2 x 8 MiB, a 9 MiB one as 2 x 4.5 MiB, not
  // 8 + 1): rank 0's receive ring of two chunks then holds the next rounds, and the small
  // ones between tensors, while the writer writes the last.
  struct Round {
    const uint8_t* data;
    size_t bytes;
  };
  std::vector<Round> rounds;
  std::vector<uint64_t> round_bytes;
  if (!root) {
    const size_t max_round = std::max<size_t>(chunk / 2, 1);
    for (const Segment& seg : stream_) {
      if (seg.bytes == 0) continue;
      const size_t n = (seg.bytes + max_round - 1) / max_round;
      const size_t piece = (seg.bytes + n - 1) / n;
      for (size_t off = 0; off < seg.bytes; off += piece) {
        rounds.push_back({seg.data + off, std::min(piece, seg.bytes - off)});
        round_bytes.push_back(rounds.back().bytes);
      }
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(world));
  const auto mine = static_cast<int64_t>(rounds.size());
  comm.all_gather(&mine, counts.data(), 1, DType::kInt64);
  // Rank 0 learns every round's size up front, to place each in its receive ring.
  // Rank 0 keeps taking part in every round even after a local failure (here, in the writer
  // or in the commit), so that the collective sequence stays the same on all ranks; the
  // failure is agreed on at the end.
  std::exception_ptr failure;
  std::vector<size_t> all_round_bytes;
  if (world > 1) {
    auto sizes = comm.gather_bytes(round_bytes.data(), round_bytes.size() * sizeof(uint64_t), 0);
    for (int r = 1; root && r < world; ++r) {
      const auto& v = sizes[static_cast<size_t>(r)];
      if (v.size() != static_cast<size_t>(counts[static_cast<size_t>(r)]) * sizeof(uint64_t)) {
        failure = std::make_exception_ptr(Error(
            ErrorKind::kInternal,
            fmt::format("save: rank {} announced {} rounds but sent {} bytes of round sizes", r,
                        counts[static_cast<size_t>(r)], v.size())));
        break;
      }
      for (size_t i = 0; i < v.size(); i += sizeof(uint64_t)) {
        uint64_t b;
        std::memcpy(&b, v.data() + i, sizeof(b));
        all_round_bytes.push_back(static_cast<size_t>(b));
      }
    }
  }

  // Rank 0 starts writing its own share at once, before waiting for anyone.
  std::unique_ptr<RootWriter> writer;
  GatherBuffer sink;  // rank 0 without a writer (it failed to start): rounds are dropped here
  const std::string tmp = root ? temp_path_for(request_.final_path) : std::string();
  if (root && !failure) {
    RootWriter::Segments own;
    for (const Segment& s : stream_) own.emplace_back(s.data, s.bytes);
    try {
      writer = std::make_unique<RootWriter>(tmp, request_.meta, std::move(own), world,
                                            std::move(all_round_bytes), 2 * chunk);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  // Ranks other than 0 checksum their tensors first (each checksum goes into its header,
  // which is sent before the tensor): while rank 0 writes its own share, off the training
  // thread in an async save, and out of the rounds' way (a round then costs one transfer).
  if (!root) {
    for (const ChecksumSlot& c : checksums_) {
      const uint64_t sum = checksum_bytes(c.data, c.bytes);
      std::memcpy(base_ + c.slot, &sum, sizeof(sum));
    }
  }
  // One sender per round: rank 1's whole share, then rank 2's, ... so that the file is
  // written one tensor at a time and rank 0 receives one piece per round (not one per rank).
  int64_t k = 0;
  for (int sender = 1; sender < world; ++sender) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(sender)]; ++i, ++k) {
      if (root) {
        GatherBuffer* buf = writer ? writer->acquire(k) : &sink;
        comm.gather_bytes_into(nullptr, 0, 0, buf);
        if (writer) writer->filled(k);
      } else if (sender == comm.rank()) {
        const Round& r = rounds[static_cast<size_t>(i)];
        comm.gather_bytes_into(r.data, r.bytes, 0, nullptr);
      } else {
        comm.gather_bytes_into(nullptr, 0, 0, nullptr);
      }
    }
  }
  BlockDigests digests;
  if (writer) {
    failure = writer->finish();
    if (!failure) digests = writer->take_block_digests();
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
                                                request_.update_latest, &digests);
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
