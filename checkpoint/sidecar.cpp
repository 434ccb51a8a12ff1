#include "checkpoint/sidecar.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_data.h"
#include "collectives/error.h"

namespace ddp::ckpt {

namespace {

nlohmann::json digest_to_json(const FileDigest& d) {
  return {{"bytes", d.bytes},
          {"algorithm", algorithm_name(d.algorithm)},
          {"checksum", hex64(d.checksum)},
          {"global_step", d.global_step}};
}

// An algorithm name this build does not know: a newer ddp-runtime wrote the sidecar.
struct UnknownAlgorithm : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws std::runtime_error with the reason; the caller wraps it.
FileDigest digest_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw std::runtime_error("not a JSON object");
  if (!j.contains("bytes") || !j["bytes"].is_number_unsigned())
    throw std::runtime_error("'bytes' missing or not an unsigned integer");
  std::optional<FileChecksumAlgorithm> algorithm;
  if (j.contains("algorithm") && j["algorithm"].is_string()) {
    const std::string name = j["algorithm"].get<std::string>();
    algorithm = parse_algorithm(name);
    if (!algorithm) {
      throw UnknownAlgorithm(fmt::format("checksum algorithm '{}' is unknown to this build "
                                         "(it knows {})", name, known_algorithm_names()));
    }
  }
  if (!algorithm)
    throw std::runtime_error(fmt::format("'algorithm' missing or not {}", known_algorithm_names()));
  FileDigest d;
  d.algorithm = *algorithm;
  d.bytes = j["bytes"].get<uint64_t>();
  if (!j.contains("checksum") || !j["checksum"].is_string() ||
      !parse_hex64(j["checksum"].get<std::string>(), &d.checksum))
    throw std::runtime_error("'checksum' missing or not a hex string");
  if (j.contains("global_step") && j["global_step"].is_number_integer())
    d.global_step = j["global_step"].get<int64_t>();
  return d;
}

}  // namespace

const FileDigest* Sidecar::entry_for_size(uint64_t bytes) const {
  if (current.bytes == bytes) return &current;
  if (replaces && replaces->bytes == bytes) return &*replaces;
  return nullptr;
}

const FileDigest* Sidecar::matching(const FileHash& hash) const {
  auto same = [&](const FileDigest& d) {
    return d.bytes == hash.bytes && d.algorithm == hash.algorithm && d.checksum == hash.checksum;
  };
  if (same(current)) return &current;
  if (replaces && same(*replaces)) return &*replaces;
  return nullptr;
}

const FileDigest* find_matching_entry(FileSystem& fs, const Sidecar& sidecar,
                                      const std::string& checkpoint_path, uint64_t size,
                                      FileHash* actual) {
  std::optional<FileHash> by_algorithm[2];  // each algorithm's hash, computed once
  bool reported = false;
  for (const FileDigest* d : {&sidecar.current, sidecar.replaces ? &*sidecar.replaces : nullptr}) {
    if (!d || d->bytes != size) continue;
    std::optional<FileHash>& hash = by_algorithm[static_cast<int>(d->algorithm)];
    if (!hash) {
      hash = fs.hash_file(checkpoint_path, d->algorithm);
      if (actual && !reported) *actual = *hash;
      reported = true;
    }
    if (const FileDigest* m = sidecar.matching(*hash)) return m;
  }
  return nullptr;
}

std::string sidecar_path_for(const std::string& checkpoint_path) {
  return checkpoint_path + kSidecarSuffix;
}

std::string sidecar_to_json(const Sidecar& sidecar) {
  nlohmann::json j = digest_to_json(sidecar.current);
  if (sidecar.replaces) j["replaces"] = digest_to_json(*sidecar.replaces);
  return j.dump(2) + "\n";
}

Sidecar sidecar_from_json(const std::string& text, const std::string& where) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    Sidecar s;
    s.current = digest_from_json(j);
    if (j.contains("replaces")) s.replaces = digest_from_json(j["replaces"]);
    return s;
  } catch (const UnknownAlgorithm& e) {
    throw Error(ErrorKind::kNewerVersion,
                fmt::format("sidecar '{}' was written by a newer ddp-runtime: {}; upgrade "
                            "ddp-runtime to verify and load it (the file itself may well be "
                            "intact)", where, e.what()));
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kCorruption, fmt::format("sidecar '{}' is unreadable: {}", where, e.what()));
  }
}

std::optional<Sidecar> read_sidecar(FileSystem& fs, const std::string& checkpoint_path) {
  const std::string path = sidecar_path_for(checkpoint_path);
  if (!fs.exists(path)) return std::nullopt;
  return sidecar_from_json(fs.read_file(path), path);
}

bool verify_against_sidecar(FileSystem& fs, const std::string& checkpoint_path) {
  if (!fs.exists(checkpoint_path)) {
    throw Error(ErrorKind::kNotFound, fmt::format("checkpoint '{}' does not exist", checkpoint_path));
  }
  const std::optional<Sidecar> sidecar = read_sidecar(fs, checkpoint_path);
  if (!sidecar) return false;
  const uint64_t size = fs.file_size(checkpoint_path);
  const FileDigest* expected = sidecar->entry_for_size(size);
  if (!expected) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("checkpoint '{}': size mismatch: recorded {} bytes, file has {} ({})",
                            checkpoint_path, sidecar->current.bytes, size,
                            size < sidecar->current.bytes ? "truncated?" : "appended to?"));
  }
  FileHash actual;
  if (!find_matching_entry(fs, *sidecar, checkpoint_path, size, &actual)) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("checkpoint '{}': checksum mismatch: recorded {}, file has {} ({})",
                            checkpoint_path, hex64(expected->checksum), hex64(actual.checksum),
                            algorithm_name(actual.algorithm)));
  }
  return true;
}

}  // namespace ddp::ckpt
