#include "checkpoint/sharded_save.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <numeric>

#include <fmt/format.h>

#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_writer.h"
#include "collectives/agreement.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

enum RecordKind : uint8_t { kTensorRecord = 0, kRankRecord = 1 };

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

void put_bytes(std::vector<uint8_t>& out, const void* data, size_t n) {
  put<uint64_t>(out, n);
  const auto* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + n);
}

// Reads records from a byte stream that may arrive in pieces.
class RecordParser {
 public:
  void append(const std::vector<uint8_t>& bytes) {
    buf_.insert(buf_.end(), bytes.begin(), bytes.end());
  }
  // Parses every complete record at the front; calls on_tensor / on_rank for each.
  template <typename OnTensor, typename OnRank>
  void drain(OnTensor on_tensor, OnRank on_rank) {
    size_t pos = 0;
    for (;;) {
      size_t p = pos;
      uint8_t kind;
      if (!get(p, kind)) break;
      if (kind == kTensorRecord) {
        TensorEntry t;
        uint8_t dtype;
        uint32_t ndim;
        std::vector<uint8_t> path;
        if (!get_bytes(p, path) || !get(p, dtype) || !get(p, ndim)) break;
        t.shape.resize(ndim);
        bool ok = true;
        for (auto& d : t.shape) ok = ok && get(p, d);
        if (!ok || !get(p, t.checksum) || !get_bytes(p, t.data)) break;
        t.path.assign(path.begin(), path.end());
        t.dtype = static_cast<DType>(dtype);
        pos = p;
        on_tensor(t);
      } else if (kind == kRankRecord) {
        RankState r;
        if (!get(p, r.rank) || !get(p, r.sampler_epoch) || !get(p, r.sampler_index) ||
            !get_bytes(p, r.cpu_rng) || !get_bytes(p, r.cuda_rng))
          break;
        pos = p;
        on_rank(r);
      } else {
        throw Error(ErrorKind::kInternal, "checkpoint gather: corrupt record stream");
      }
    }
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos));
  }
  bool empty() const { return buf_.empty(); }

 private:
  template <typename T>
  bool get(size_t& p, T& v) const {
    if (buf_.size() - p < sizeof(T)) return false;
    std::memcpy(&v, buf_.data() + p, sizeof(T));
    p += sizeof(T);
    return true;
  }
  bool get_bytes(size_t& p, std::vector<uint8_t>& out) const {
    uint64_t n;
    size_t q = p;
    if (!get(q, n) || buf_.size() - q < n) return false;
    out.assign(buf_.begin() + static_cast<std::ptrdiff_t>(q),
               buf_.begin() + static_cast<std::ptrdiff_t>(q + n));
    p = q + n;
    return true;
  }
  std::vector<uint8_t> buf_;
};

}  // namespace

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
  size_t total = 0;
  for (size_t i = 0; i < request.tensors.size(); ++i) {
    if (owner[i] == comm.rank()) total += request.tensors[i].bytes + request.tensors[i].path.size() + 64;
  }
  auto& out = pending->stream_;
  out.reserve(total + request.rank_state.cpu_rng.size() + request.rank_state.cuda_rng.size() + 64);
  for (size_t i = 0; i < request.tensors.size(); ++i) {
    if (owner[i] != comm.rank()) continue;
    const TensorSource& src = request.tensors[i];
    put<uint8_t>(out, kTensorRecord);
    put_bytes(out, src.path.data(), src.path.size());
    put<uint8_t>(out, static_cast<uint8_t>(src.dtype));
    put<uint32_t>(out, static_cast<uint32_t>(src.shape.size()));
    for (int64_t d : src.shape) put<int64_t>(out, d);
    const size_t checksum_at = out.size();
    put<uint64_t>(out, 0);
    put<uint64_t>(out, src.bytes);
    const size_t data_at = out.size();
    out.resize(data_at + src.bytes);
    if (src.bytes) src.copy_to(out.data() + data_at);
    const uint64_t sum = checksum_bytes(out.data() + data_at, src.bytes);
    std::memcpy(out.data() + checksum_at, &sum, sizeof(sum));
  }
  const RankState& rs = request.rank_state;
  put<uint8_t>(out, kRankRecord);
  put<int64_t>(out, rs.rank);
  put<int64_t>(out, rs.sampler_epoch);
  put<int64_t>(out, rs.sampler_index);
  put_bytes(out, rs.cpu_rng.data(), rs.cpu_rng.size());
  put_bytes(out, rs.cuda_rng.data(), rs.cuda_rng.size());
  // The sources reference live tensors; the pending save must not touch them again.
  request.tensors.clear();
  pending->request_ = std::move(request);
  pending->snapshot_s_ = now_s() - t0;
  return pending;
}

PendingSave::~PendingSave() = default;

SaveResult PendingSave::finish(Communicator& comm, FileSystem& fs) {
  const double t0 = now_s();
  const int world = comm.size();
  const bool root = comm.rank() == 0;
  const size_t chunk = std::max<size_t>(request_.chunk_bytes, 1);

  std::vector<int64_t> sizes(static_cast<size_t>(world));
  const int64_t mine = static_cast<int64_t>(stream_.size());
  comm.all_gather(&mine, sizes.data(), 1, DType::kInt64);
  int64_t rounds = 0;
  for (int r = 1; r < world; ++r) {
    rounds = std::max<int64_t>(rounds, (sizes[r] + static_cast<int64_t>(chunk) - 1) /
                                           static_cast<int64_t>(chunk));
  }

  // Rank 0 keeps taking part in every round even after a local failure, so that the
  // collective sequence stays the same on all ranks; the failure is agreed on at the end.
  std::exception_ptr failure;
  std::unique_ptr<FileWriter> writer;
  const std::string tmp = root ? temp_path_for(request_.final_path) : std::string();
  auto on_tensor = [&](const TensorEntry& t) {
    if (!failure) writer->add_tensor(t);
  };
  auto on_rank = [&](const RankState& r) {
    if (!failure && !request_.meta.weights_only) writer->add_rank_state(r);
  };
  if (root) {
    try {
      writer = std::make_unique<FileWriter>(tmp, request_.meta);
      RecordParser own;
      own.append(stream_);
      own.drain(on_tensor, on_rank);
      std::vector<uint8_t>().swap(stream_);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  std::vector<RecordParser> parsers(root ? static_cast<size_t>(world) : 0);
  for (int64_t k = 0; k < rounds; ++k) {
    const size_t offset = static_cast<size_t>(k) * chunk;
    const size_t n = offset < stream_.size() ? std::min(chunk, stream_.size() - offset) : 0;
    auto got = comm.gather_bytes(root ? nullptr : stream_.data() + offset, root ? 0 : n, 0);
    if (!root) continue;
    for (int r = 1; r < world; ++r) {
      if (failure) break;
      try {
        parsers[r].append(got[static_cast<size_t>(r)]);
        std::vector<uint8_t>().swap(got[static_cast<size_t>(r)]);
        parsers[r].drain(on_tensor, on_rank);
      } catch (...) {
        failure = std::current_exception();
      }
    }
  }
  std::vector<uint8_t>().swap(stream_);

  SaveResult result;
  if (root && !failure) {
    try {
      writer->close();
      writer.reset();
      const CommitInfo info = commit_checkpoint(fs, tmp, request_.final_path,
                                                request_.meta.global_step,
                                                request_.update_latest);
      result.bytes = info.bytes;
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (root && failure) {
    writer.reset();
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
  result.write_s = now_s() - t0;
  return result;
}

}  // namespace ddp::ckpt
