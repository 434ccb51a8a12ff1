#include "checkpoint/checkpoint_broadcast.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collectives/error.h"

namespace ddp::ckpt {

namespace {

using nlohmann::json;

json meta_to_json(const CheckpointMeta& m) {
  return json{{"format_version", m.format_version},
              {"global_step", m.global_step},
              {"epoch", m.epoch},
              {"batch_in_epoch", m.batch_in_epoch},
              {"samples_in_epoch", m.samples_in_epoch},
              {"world_size", m.world_size},
              {"batch_size", m.batch_size},
              {"weights_only", m.weights_only},
              {"ddp_runtime_version", m.ddp_runtime_version},
              {"torch_version", m.torch_version},
              {"hdf5_version", m.hdf5_version},
              {"created_utc", m.created_utc},
              {"config_yaml", m.config_yaml},
              {"hparams_json", m.hparams_json},
              {"fingerprint", m.fingerprint},
              {"optimizer_json", m.optimizer_json},
              {"scheduler_json", m.scheduler_json},
              {"grad_scaler_json", m.grad_scaler_json},
              {"callbacks_json", m.callbacks_json},
              {"metrics", m.metrics}};
}

CheckpointMeta meta_from_json(const json& j) {
  CheckpointMeta m;
  m.format_version = j.at("format_version").get<int64_t>();
  m.global_step = j.at("global_step").get<int64_t>();
  m.epoch = j.at("epoch").get<int64_t>();
  m.batch_in_epoch = j.at("batch_in_epoch").get<int64_t>();
  m.samples_in_epoch = j.at("samples_in_epoch").get<int64_t>();
  m.world_size = j.at("world_size").get<int64_t>();
  m.batch_size = j.at("batch_size").get<int64_t>();
  m.weights_only = j.at("weights_only").get<bool>();
  m.ddp_runtime_version = j.at("ddp_runtime_version").get<std::string>();
  m.torch_version = j.at("torch_version").get<std::string>();
  m.hdf5_version = j.at("hdf5_version").get<std::string>();
  m.created_utc = j.at("created_utc").get<std::string>();
  m.config_yaml = j.at("config_yaml").get<std::string>();
  m.hparams_json = j.at("hparams_json").get<std::string>();
  m.fingerprint = j.at("fingerprint").get<std::string>();
  m.optimizer_json = j.at("optimizer_json").get<std::string>();
  m.scheduler_json = j.at("scheduler_json").get<std::string>();
  m.grad_scaler_json = j.at("grad_scaler_json").get<std::string>();
  m.callbacks_json = j.at("callbacks_json").get<std::string>();
  m.metrics = j.at("metrics").get<std::map<std::string, double>>();
  return m;
}

// Little-endian-agnostic: both ends are the same build on the same architecture family
// (a job does not mix byte orders); fixed-width fields keep it unambiguous anyway.
void put_i64(std::vector<uint8_t>* out, int64_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out->insert(out->end(), p, p + sizeof(v));
}
void put_blob(std::vector<uint8_t>* out, const std::vector<uint8_t>& blob) {
  put_i64(out, static_cast<int64_t>(blob.size()));
  out->insert(out->end(), blob.begin(), blob.end());
}

struct Cursor {
  const std::vector<uint8_t>& bytes;
  size_t at = 0;
  int64_t i64() {
    need(sizeof(int64_t));
    int64_t v;
    std::memcpy(&v, bytes.data() + at, sizeof(v));
    at += sizeof(v);
    return v;
  }
  std::vector<uint8_t> blob() {
    const int64_t n = i64();
    if (n < 0) need(bytes.size() + 1);
    need(static_cast<size_t>(n));
    std::vector<uint8_t> v(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                           bytes.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += static_cast<size_t>(n);
    return v;
  }
  void need(size_t n) const {
    if (bytes.size() - at < n) {
      throw Error(ErrorKind::kInternal, "broadcast_checkpoint: truncated rank state record");
    }
  }
};

}  // namespace

std::string encode_header(const Checkpoint& c) {
  json tensors = json::array();
  for (const auto& t : c.tensors) {
    tensors.push_back(json{{"path", t.path},
                           {"dtype", static_cast<int>(t.dtype)},
                           {"shape", t.shape},
                           {"bytes", t.data.size()},
                           {"checksum", hex64(t.checksum)}});
  }
  return json{{"meta", meta_to_json(c.meta)},
              {"tensors", tensors},
              {"verified_file", c.verified_file}}
      .dump();
}

Checkpoint decode_header(const std::string& header, const std::function<bool(size_t)>& keep) {
  Checkpoint c;
  try {
    const json j = json::parse(header);
    c.meta = meta_from_json(j.at("meta"));
    c.verified_file = j.at("verified_file").get<bool>();
    size_t index = 0;
    for (const auto& t : j.at("tensors")) {
      if (keep && !keep(index++)) continue;
      TensorEntry e;
      e.path = t.at("path").get<std::string>();
      e.dtype = static_cast<DType>(t.at("dtype").get<int>());
      e.shape = t.at("shape").get<std::vector<int64_t>>();
      e.data.resize(t.at("bytes").get<size_t>());
      if (!parse_hex64(t.at("checksum").get<std::string>(), &e.checksum)) {
        throw Error(ErrorKind::kInternal, "bad checksum field");
      }
      c.tensors.push_back(std::move(e));
    }
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInternal,
                fmt::format("broadcast_checkpoint: bad header from the root: {}", e.what()));
  }
  return c;
}

std::vector<uint8_t> encode_rank_state(const RankState& s) {
  std::vector<uint8_t> out;
  put_i64(&out, s.rank);
  put_i64(&out, s.sampler_epoch);
  put_i64(&out, s.sampler_index);
  put_blob(&out, s.cpu_rng);
  put_blob(&out, s.cuda_rng);
  return out;
}

RankState decode_rank_state(const std::vector<uint8_t>& bytes) {
  Cursor in{bytes};
  RankState s;
  s.rank = in.i64();
  s.sampler_epoch = in.i64();
  s.sampler_index = in.i64();
  s.cpu_rng = in.blob();
  s.cuda_rng = in.blob();
  return s;
}

namespace {

// What every rank knows of each tensor from the header alone.
struct Slot {
  size_t bytes = 0;
  int dest = -1;                 // BroadcastOptions::destination
  TensorEntry* held = nullptr;   // this rank's entry, or null (not meant for it)
};

std::vector<Slot> slots_of(const std::string& header, const BroadcastOptions& options,
                           int world_size) {
  std::vector<Slot> slots;
  try {
    const json parsed = json::parse(header);  // outlives the loop (a temporary would not)
    for (const auto& t : parsed.at("tensors")) {
      Slot s;
      s.bytes = t.at("bytes").get<size_t>();
      if (options.destination) s.dest = options.destination(t.at("path").get<std::string>());
      if (s.dest >= world_size) {
        throw Error(ErrorKind::kInternal,
                    fmt::format("broadcast_checkpoint: destination rank {} of {}", s.dest,
                                world_size));
      }
      slots.push_back(s);
    }
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInternal,
                fmt::format("broadcast_checkpoint: bad header from the root: {}", e.what()));
  }
  return slots;
}

// Step 2: the tensors meant for every rank, concatenated, one bounded chunk at a time.
// Tensors at least a chunk long travel in place (no copy); smaller ones are packed together.
void broadcast_common(Communicator& comm, int root, const std::vector<Slot>& slots,
                      size_t chunk_bytes) {
  const bool at_root = comm.rank() == root;
  std::vector<size_t> order;  // slot indices meant for every rank
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].dest < 0) order.push_back(i);
  }
  std::vector<uint8_t> chunk;
  size_t next = 0;  // first of `order` not yet sent
  while (next < order.size()) {
    TensorEntry& first = *slots[order[next]].held;
    if (first.data.size() >= chunk_bytes) {
      comm.broadcast(first.data.data(), first.data.size(), DType::kUInt8, root);
      ++next;
      continue;
    }
    // The first one is smaller than a chunk, so every round takes at least one tensor.
    size_t end = next, bytes = 0;
    while (end < order.size() && slots[order[end]].bytes < chunk_bytes &&
           bytes + slots[order[end]].bytes <= chunk_bytes) {
      bytes += slots[order[end]].bytes;
      ++end;
    }
    chunk.resize(bytes);
    size_t at = 0;
    for (size_t k = next; k < end && at_root; ++k) {
      const auto& data = slots[order[k]].held->data;
      if (!data.empty()) std::memcpy(chunk.data() + at, data.data(), data.size());
      at += data.size();
    }
    if (bytes > 0) comm.broadcast(chunk.data(), bytes, DType::kUInt8, root);
    at = 0;
    for (size_t k = next; k < end && !at_root; ++k) {
      auto& data = slots[order[k]].held->data;
      if (!data.empty()) std::memcpy(data.data(), chunk.data() + at, data.size());
      at += data.size();
    }
    next = end;
  }
}

// Step 2b: each targeted tensor to its rank alone, by scatter, in rounds of at most
// chunk_bytes in all (or one larger tensor), grouped by destination.
void scatter_targeted(Communicator& comm, int root, const std::vector<Slot>& slots,
                      size_t chunk_bytes) {
  const bool at_root = comm.rank() == root;
  std::vector<size_t> order;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].dest >= 0 && slots[i].dest != root) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return slots[a].dest < slots[b].dest; });
  size_t next = 0;
  while (next < order.size()) {
    size_t end = next + 1, bytes = slots[order[next]].bytes;
    while (end < order.size() && bytes + slots[order[end]].bytes <= chunk_bytes) {
      bytes += slots[order[end]].bytes;
      ++end;
    }
    std::vector<std::vector<uint8_t>> parts;
    if (at_root) {
      parts.resize(static_cast<size_t>(comm.size()));
      for (size_t k = next; k < end; ++k) {
        const Slot& s = slots[order[k]];
        auto& part = parts[static_cast<size_t>(s.dest)];
        part.insert(part.end(), s.held->data.begin(), s.held->data.end());
      }
    }
    const std::vector<uint8_t> got = comm.scatter_bytes(at_root ? &parts : nullptr, root);
    size_t at = 0;
    for (size_t k = next; k < end && !at_root; ++k) {
      const Slot& s = slots[order[k]];
      if (s.dest != comm.rank()) continue;
      if (at + s.bytes > got.size()) {
        throw Error(ErrorKind::kInternal, "broadcast_checkpoint: short targeted round");
      }
      if (s.bytes) std::memcpy(s.held->data.data(), got.data() + at, s.bytes);
      at += s.bytes;
    }
    next = end;
  }
}

}  // namespace

void broadcast_checkpoint(Communicator& comm, int root, Checkpoint* checkpoint,
                          const BroadcastOptions& options) {
  if (options.chunk_bytes == 0) {
    throw Error(ErrorKind::kInvalidArgument, "broadcast_checkpoint: chunk_bytes must be > 0");
  }
  const int me = comm.rank();
  const bool at_root = me == root;
  const std::string header =
      broadcast_string(comm, at_root ? encode_header(*checkpoint) : "", root);
  std::vector<Slot> slots = slots_of(header, options, comm.size());
  auto meant_for_me = [&](size_t i) { return slots[i].dest < 0 || slots[i].dest == me; };
  if (!at_root) *checkpoint = decode_header(header, meant_for_me);
  auto& tensors = checkpoint->tensors;
  for (size_t i = 0, k = 0; i < slots.size(); ++i) {
    if (at_root || meant_for_me(i)) slots[i].held = &tensors[k++];
  }
  broadcast_common(comm, root, slots, options.chunk_bytes);
  scatter_targeted(comm, root, slots, options.chunk_bytes);
  if (at_root && options.destination) {  // the root keeps what is meant for it, too
    std::vector<TensorEntry> kept;
    for (size_t i = 0; i < slots.size(); ++i) {
      if (meant_for_me(i)) kept.push_back(std::move(tensors[i]));
    }
    tensors = std::move(kept);
  }
  // Checked once all communication is over: a receiver that threw here would leave the
  // others waiting in step 3.
  std::optional<Error> bad;
  if (!at_root && options.verify) {
    for (const auto& t : tensors) {
      const uint64_t got = checksum_bytes(t.data.data(), t.data.size());
      if (got != t.checksum) {
        bad = Error(ErrorKind::kCorruption,
                    fmt::format("rank {}: tensor '{}' received from rank {} has xxh3 {}, the "
                                "checkpoint records {}",
                                comm.rank(), t.path, root, hex64(got), hex64(t.checksum)));
        break;
      }
    }
  }

  // Step 3: each rank its own state, when the world size matches the saving one.
  const bool same_world = checkpoint->meta.world_size == comm.size();
  if (checkpoint->meta.weights_only || !same_world) {
    if (!at_root) checkpoint->ranks.clear();
    if (bad) throw *bad;
    return;
  }
  std::vector<std::vector<uint8_t>> parts;
  if (at_root) {
    parts.resize(static_cast<size_t>(comm.size()));
    for (const auto& r : checkpoint->ranks) {
      if (r.rank >= 0 && r.rank < comm.size()) {
        parts[static_cast<size_t>(r.rank)] = encode_rank_state(r);
      }
    }
  }
  const std::vector<uint8_t> mine = comm.scatter_bytes(at_root ? &parts : nullptr, root);
  if (!at_root) {
    checkpoint->ranks.clear();
    if (!mine.empty()) checkpoint->ranks.push_back(decode_rank_state(mine));
  }
  if (bad) throw *bad;
}

}  // namespace ddp::ckpt
