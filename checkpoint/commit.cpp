#include "checkpoint/commit.h"

#include <unistd.h>

#include <algorithm>
#include <future>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/sidecar.h"
#include "collectives/error.h"

namespace ddp::ckpt {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Best-effort removal on an error path: the original error is what the caller must see.
void remove_quietly(FileSystem& fs, const std::string& path) {
  try {
    fs.remove(path);
  } catch (const Error&) {
  }
}

std::string latest_json(const std::string& file, int64_t global_step, uint64_t bytes,
                        uint64_t checksum, FileChecksumAlgorithm algorithm) {
  const nlohmann::json j = {
      {"file", file},
      {"global_step", global_step},
      {"bytes", bytes},
      {"checksum", {{"algorithm", algorithm_name(algorithm)}, {"value", hex64(checksum)}}}};
  return j.dump(2) + "\n";
}

}  // namespace

std::string temp_path_for(const std::string& final_path) {
  return join_path(parent_dir(final_path),
                   fmt::format(".{}.tmp-{}", base_name(final_path), ::getpid()));
}

bool is_temporary_name(const std::string& name) {
  return name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos;
}

void point_name_at(FileSystem& fs, const std::string& target_path,
                   const std::string& link_path) {
  const std::string dir = parent_dir(link_path);
  const auto target = read_sidecar(fs, target_path);
  if (!target) {
    throw Error(ErrorKind::kInternal,
                fmt::format("'{}' has no sidecar: it was not committed", target_path));
  }
  Sidecar next;
  next.current = target->current;
  const std::string sidecar = sidecar_path_for(link_path);
  if (fs.exists(link_path)) {
    try {
      if (auto old = read_sidecar(fs, link_path)) {
        const uint64_t size = fs.file_size(link_path);
        const FileDigest* entry = old->replaces ? find_matching_entry(fs, *old, link_path, size)
                                                : old->entry_for_size(size);
        if (entry) next.replaces = *entry;
      }
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kCorruption) throw;  // unreadable: nothing worth keeping
    }
  }
  if (next.replaces) write_file_atomically(fs, sidecar, sidecar_to_json(next));
  const std::string tmp = temp_path_for(link_path);
  remove_quietly(fs, tmp);
  try {
    fs.link(target_path, tmp);
  } catch (const Error&) {
    fs.write_file(tmp, fs.read_file(target_path));  // no hard links here: a durable copy
  }
  try {
    fs.rename(tmp, link_path);
  } catch (...) {
    remove_quietly(fs, tmp);
    throw;
  }
  fs.fsync_dir(dir);
  next.replaces.reset();
  write_file_atomically(fs, sidecar, sidecar_to_json(next));
}

void write_file_atomically(FileSystem& fs, const std::string& path, const std::string& data) {
  const std::string tmp = temp_path_for(path);
  try {
    fs.write_file(tmp, data);
    fs.rename(tmp, path);
  } catch (const Error&) {
    remove_quietly(fs, tmp);
    throw;
  }
  fs.fsync_dir(parent_dir(path));
}

CommitInfo commit_checkpoint(FileSystem& fs, const std::string& tmp_path,
                             const std::string& final_path, int64_t global_step,
                             bool update_latest, const BlockDigests* known) {
  const std::string dir = parent_dir(final_path);
  if (parent_dir(tmp_path) != dir || tmp_path == final_path) {
    throw Error(ErrorKind::kInternal,
                fmt::format("commit: temporary '{}' must be another name in the directory of "
                            "'{}' (rename is atomic only within one directory)", tmp_path,
                            final_path));
  }
  CommitInfo info;
  info.path = final_path;
  info.sidecar_path = sidecar_path_for(final_path);
  info.global_step = global_step;

  Sidecar sidecar;
  bool replacing = false;  // final_path already holds a checkpoint with a usable sidecar
  bool sidecar_written = false;
  const std::string sidecar_tmp = temp_path_for(info.sidecar_path);
  const std::string latest_path = join_path(dir, kLatestFileName);
  const std::string latest_tmp = temp_path_for(latest_path);
  try {
    // The fsync of the data runs while this thread computes the checksum (CPU: with the
    // writer's block digests it reads back only HDF5's metadata blocks) and writes and fsyncs
    // the two small temporaries: where a flush is slow (a network file system, a busy disk)
    // the commit waits for one flush here, not three in a row. Nothing is renamed until all
    // three are durable.
    std::future<void> data_sync =
        std::async(std::launch::async, [&fs, &tmp_path] { fs.fsync_file(tmp_path); });
    try {
      const FileHash hash = fs.hash_file(tmp_path, kFileChecksumAlgorithm, known);
      info.bytes = hash.bytes;
      info.checksum = hash.checksum;
      info.algorithm = hash.algorithm;
      sidecar.current = FileDigest{hash.bytes, hash.checksum, hash.algorithm, global_step};
      if (fs.exists(final_path)) {
        // Reusing a name ("last.h5"): keep the old content verifiable until the rename is
        // durable.
        try {
          if (auto old = read_sidecar(fs, final_path)) {
            // After an interrupted commit of this name the old sidecar has two entries; only a
            // hash tells which one the file holds (rare: recovery only).
            const uint64_t size = fs.file_size(final_path);
            const FileDigest* entry = old->replaces
                                          ? find_matching_entry(fs, *old, final_path, size)
                                          : old->entry_for_size(size);
            if (entry) {
              sidecar.replaces = *entry;
              replacing = true;
            }
          }
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kCorruption) throw;  // unreadable old sidecar: nothing to keep
        }
      }
      fs.write_file(sidecar_tmp, sidecar_to_json(sidecar));
      if (update_latest) {
        fs.write_file(latest_tmp, latest_json(base_name(final_path), global_step, info.bytes,
                                              info.checksum, info.algorithm));
      }
    } catch (...) {
      data_sync.wait();  // never leave the thread running against a file we may remove
      throw;
    }
    data_sync.get();
    fs.rename(sidecar_tmp, info.sidecar_path);
    sidecar_written = true;
    fs.fsync_dir(dir);
    fs.rename(tmp_path, final_path);
  } catch (const Error&) {
    remove_quietly(fs, tmp_path);
    remove_quietly(fs, sidecar_tmp);
    remove_quietly(fs, latest_tmp);
    // The rename did not happen. Without an old checkpoint to keep verifiable, a sidecar written
    // here describes nothing: drop it. When replacing, it stays: its "replaces" entry still
    // matches the old content.
    if (sidecar_written && !replacing) remove_quietly(fs, info.sidecar_path);
    throw;
  }
  try {
    fs.fsync_dir(dir);
    if (replacing) {
      sidecar.replaces.reset();
      write_file_atomically(fs, info.sidecar_path, sidecar_to_json(sidecar));
    }
    if (update_latest) {
      fs.rename(latest_tmp, latest_path);
      fs.fsync_dir(dir);
      info.latest_updated = true;
    }
  } catch (const Error&) {
    remove_quietly(fs, latest_tmp);  // committed, but latest.json still names the previous one
    throw;
  }
  return info;
}

void write_latest(FileSystem& fs, const std::string& dir, const std::string& file,
                  int64_t global_step, uint64_t bytes, uint64_t checksum,
                  FileChecksumAlgorithm algorithm) {
  write_file_atomically(fs, join_path(dir, kLatestFileName),
                        latest_json(file, global_step, bytes, checksum, algorithm));
}

std::optional<LatestPointer> read_latest(FileSystem& fs, const std::string& dir,
                                         std::string* warning) {
  const std::string path = join_path(dir, kLatestFileName);
  if (warning) warning->clear();
  if (!fs.exists(path)) return std::nullopt;
  const std::string text = fs.read_file(path);
  auto unusable = [&](const std::string& why) -> std::optional<LatestPointer> {
    if (warning) *warning = fmt::format("'{}' is unusable ({}); ignoring it", path, why);
    return std::nullopt;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    return unusable(text.empty() ? "empty file" : "not valid JSON");
  }
  if (!j.is_object()) return unusable("not a JSON object");
  LatestPointer p;
  if (!j.contains("file") || !j["file"].is_string()) return unusable("no 'file' string");
  p.file = j["file"].get<std::string>();
  if (p.file.empty() || p.file.find_first_of(std::string("/\0", 2)) != std::string::npos ||
      p.file == "." || p.file == "..")
    return unusable(fmt::format("'file' must be a file name in the directory, got \"{}\"", p.file));
  if (!j.contains("global_step") || !j["global_step"].is_number_integer())
    return unusable("no integer 'global_step'");
  p.global_step = j["global_step"].get<int64_t>();
  if (!j.contains("bytes") || !j["bytes"].is_number_unsigned())
    return unusable("no unsigned integer 'bytes'");
  p.bytes = j["bytes"].get<uint64_t>();
  const auto& c = j.contains("checksum") ? j["checksum"] : nlohmann::json();
  std::optional<FileChecksumAlgorithm> algorithm;
  if (c.is_object() && c.contains("algorithm") && c["algorithm"].is_string())
    algorithm = parse_algorithm(c["algorithm"].get<std::string>());
  if (!algorithm || !c.contains("value") || !c["value"].is_string() ||
      !parse_hex64(c["value"].get<std::string>(), &p.checksum))
    return unusable(fmt::format("'checksum' must be {{\"algorithm\": {}, \"value\": <hex>}}",
                                known_algorithm_names()));
  p.algorithm = *algorithm;
  p.path = join_path(dir, p.file);
  if (!fs.exists(p.path))
    return unusable(fmt::format("it names '{}', which does not exist", p.file));
  return p;
}

std::vector<CheckpointInfo> list_checkpoints(FileSystem& fs, const std::string& dir) {
  std::vector<CheckpointInfo> out;
  for (const std::string& name : fs.list_dir(dir)) {
    if (!ends_with(name, ".h5") || is_temporary_name(name)) continue;
    CheckpointInfo info;
    info.file = name;
    info.path = join_path(dir, name);
    info.bytes = fs.file_size(info.path);
    try {
      if (auto sidecar = read_sidecar(fs, info.path)) {
        const FileDigest* d = sidecar->entry_for_size(info.bytes);
        if (!d) d = &sidecar->current;
        info.sidecar = true;
        info.global_step = d->global_step;
        info.recorded_bytes = d->bytes;
        info.checksum = d->checksum;
        info.algorithm = d->algorithm;
      }
    } catch (const Error& e) {
      // Unreadable, or a newer ddp-runtime's: listed with the reason, verified (and refused)
      // by whoever opens it.
      if (e.kind() != ErrorKind::kCorruption && e.kind() != ErrorKind::kNewerVersion) throw;
      info.sidecar_error = e.what();
    }
    out.push_back(std::move(info));
  }
  std::stable_sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    if (a.sidecar != b.sidecar) return a.sidecar;
    if (a.global_step != b.global_step) return a.global_step > b.global_step;
    return a.file < b.file;
  });
  return out;
}

void remove_checkpoint(FileSystem& fs, const std::string& path) {
  // The .h5 first: a crash in between leaves an orphan sidecar (harmless, cleaned up later),
  // never a checkpoint without its sidecar.
  fs.remove(path);
  fs.remove(sidecar_path_for(path));
  fs.fsync_dir(parent_dir(path));
}

int cleanup_temporaries(FileSystem& fs, const std::string& dir) {
  int removed = 0;
  const std::vector<std::string> names = fs.list_dir(dir);
  for (const std::string& name : names) {
    bool leftover = is_temporary_name(name);
    if (!leftover && ends_with(name, std::string(".h5") + kSidecarSuffix)) {
      const std::string h5 = name.substr(0, name.size() - std::string(kSidecarSuffix).size());
      leftover = !std::binary_search(names.begin(), names.end(), h5);
    }
    if (leftover) {
      fs.remove(join_path(dir, name));
      ++removed;
    }
  }
  if (removed > 0) fs.fsync_dir(dir);
  return removed;
}

}  // namespace ddp::ckpt
