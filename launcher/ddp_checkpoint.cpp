// ddp-checkpoint: look at, verify and compare checkpoints without LibTorch or MPI.
//   ddp-checkpoint ls <dir>                 steps, epochs, metrics, sizes; which is latest / best
//   ddp-checkpoint inspect <file> [--json]  metadata, tensors (shape, dtype), ranks
//   ddp-checkpoint verify <file|dir>        exit 0 only if valid; names the first problem
//   ddp-checkpoint diff <a> <b> [--all]     per-tensor max abs difference, shape/dtype/key changes
// Exit codes: collectives/error.h (2 bad input / not found, 4 corruption / I/O, 1 internal).
// "Best" comes from the newest checkpoint's callbacks_json best-k table
// (docs/checkpoint-format.md, "Callback state").
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)
#include <nlohmann/json.hpp>

#include "checkpoint/commit.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/sidecar.h"
#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

using nlohmann::json;

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string metrics_text(const std::map<std::string, double>& metrics) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : metrics) parts.push_back(fmt::format("{}={:.4g}", k, v));
  return parts.empty() ? "-" : fmt::format("{}", fmt::join(parts, " "));
}

// The best-k table: {"best_k": [{"file", "score"}], "monitor", "mode"} at the top level of
// callbacks_json or under "model_checkpoint". Empty when absent or malformed.
struct BestK {
  std::string monitor, mode;
  std::vector<std::pair<std::string, double>> entries;
  std::string best() const {
    std::string file;
    double best = 0;
    for (const auto& [f, score] : entries) {
      if (file.empty() || (mode == "max" ? score > best : score < best)) file = f, best = score;
    }
    return file;
  }
};

BestK parse_best_k(const std::string& callbacks_json) {
  BestK out;
  const json j = json::parse(callbacks_json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  const json& t = j.contains("model_checkpoint") ? j["model_checkpoint"] : j;
  if (!t.is_object() || !t.contains("best_k") || !t["best_k"].is_array()) return out;
  out.monitor = t.value("monitor", "");
  out.mode = t.value("mode", "min");
  for (const json& e : t["best_k"]) {
    if (e.is_object() && e.contains("file") && e["file"].is_string() && e.contains("score") &&
        e["score"].is_number()) {
      out.entries.emplace_back(e["file"].get<std::string>(), e["score"].get<double>());
    }
  }
  return out;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int cmd_ls(const std::string& dir) {
  FileSystem& fs = default_file_system();
  const std::vector<CheckpointInfo> list = list_checkpoints(fs, dir);
  std::string warning;
  const std::optional<LatestPointer> latest = read_latest(fs, dir, &warning);
  if (!warning.empty()) std::fprintf(stderr, "warning: %s\n", warning.c_str());
  if (list.empty()) {
    std::printf("no checkpoints in %s\n", dir.c_str());
    return kExitOk;
  }
  struct Row { std::string file, step, epoch, size, metrics, callbacks_json, error; };
  std::vector<Row> rows;
  for (const CheckpointInfo& c : list) {
    Row r{c.file, "?", "?", human_bytes(c.bytes), "-", "", ""};
    try {
      const CheckpointMeta m = read_meta(c.path);
      r.step = std::to_string(m.global_step);
      r.epoch = std::to_string(m.epoch);
      r.metrics = metrics_text(m.metrics);
      r.callbacks_json = m.callbacks_json;
    } catch (const Error& e) {
      r.error = fmt::format("unreadable ({})", error_kind_name(e.kind()));
    }
    if (!c.sidecar) {
      const char* what = c.sidecar_error.empty() ? "no sidecar" : "sidecar unreadable";
      r.error += r.error.empty() ? what : std::string(", ") + what;
    }
    rows.push_back(std::move(r));
  }
  // The best-k table of the newest checkpoint (the one latest.json names, else the first row).
  BestK best_k;
  for (const Row& r : rows) {
    if (latest ? r.file == latest->file : &r == &rows.front()) best_k = parse_best_k(r.callbacks_json);
  }
  const std::string best = best_k.best();
  std::printf("%-40s %10s %6s %10s  %-13s %s\n", "FILE", "STEP", "EPOCH", "SIZE", "FLAGS",
              "METRICS");
  for (const Row& r : rows) {
    std::vector<std::string> flags;
    if (latest && r.file == latest->file) flags.push_back("latest");
    if (!best.empty() && r.file == best) flags.push_back("best");
    for (const auto& e : best_k.entries) {
      if (e.first == r.file && r.file != best) flags.push_back("top-k");
    }
    std::printf("%-40s %10s %6s %10s  %-13s %s%s\n", r.file.c_str(), r.step.c_str(),
                r.epoch.c_str(), r.size.c_str(), fmt::format("{}", fmt::join(flags, ",")).c_str(),
                r.metrics.c_str(), r.error.empty() ? "" : ("  [" + r.error + "]").c_str());
  }
  if (!best_k.monitor.empty()) {
    std::printf("best by %s (%s): %s\n", best_k.monitor.c_str(), best_k.mode.c_str(),
                best.empty() ? "-" : best.c_str());
  }
  int temporaries = 0;
  for (const std::string& name : fs.list_dir(dir)) temporaries += is_temporary_name(name);
  if (temporaries > 0) {
    std::printf("%d leftover temporary file(s) from interrupted saves\n", temporaries);
  }
  return kExitOk;
}

json text_or_json(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  return j.is_discarded() ? json(text) : j;
}

int cmd_inspect(const std::string& file, bool as_json) {
  ReadOptions options;
  options.verify_file_checksum = false;  // inspect shows; `verify` checks
  options.verify_tensor_checksums = false;
  FileReader reader(file, options);
  const CheckpointMeta& m = reader.meta();
  const std::vector<RankState> ranks = reader.read_ranks(false);
  FileSystem& fs = default_file_system();
  std::optional<Sidecar> sidecar;
  std::string sidecar_error;
  try {
    sidecar = read_sidecar(fs, file);
  } catch (const Error& e) {
    sidecar_error = e.what();
  }
  json j;
  j["file"] = file;
  j["bytes"] = fs.file_size(file);
  j["sidecar"] = sidecar ? json{{"bytes", sidecar->current.bytes},
                                {"algorithm", algorithm_name(sidecar->current.algorithm)},
                                {"checksum", hex64(sidecar->current.checksum)}}
                         : json(nullptr);
  j["format_version"] = m.format_version;
  j["global_step"] = m.global_step;
  j["epoch"] = m.epoch;
  j["batch_in_epoch"] = m.batch_in_epoch;
  j["samples_in_epoch"] = m.samples_in_epoch;
  j["world_size"] = m.world_size;
  j["batch_size"] = m.batch_size;
  j["weights_only"] = m.weights_only;
  j["versions"] = {{"ddp_runtime", m.ddp_runtime_version}, {"torch", m.torch_version},
                   {"hdf5", m.hdf5_version}};
  j["created_utc"] = m.created_utc;
  j["fingerprint"] = m.fingerprint;
  j["metrics"] = m.metrics;
  j["hparams"] = text_or_json(m.hparams_json);
  j["optimizer"] = text_or_json(m.optimizer_json);
  j["scheduler"] = text_or_json(m.scheduler_json);
  j["callbacks"] = text_or_json(m.callbacks_json);
  j["config_yaml"] = m.config_yaml;
  uint64_t tensor_bytes = 0;
  j["tensors"] = json::array();
  for (const TensorInfo& t : reader.tensors()) {
    j["tensors"].push_back({{"path", t.path}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape},
                            {"bytes", t.bytes}, {"xxh3", hex64(t.checksum)}});
    tensor_bytes += t.bytes;
  }
  j["ranks"] = json::array();
  for (const RankState& r : ranks) {
    j["ranks"].push_back({{"rank", r.rank}, {"sampler_epoch", r.sampler_epoch},
                          {"sampler_index", r.sampler_index}, {"cpu_rng_bytes", r.cpu_rng.size()},
                          {"cuda_rng_bytes", r.cuda_rng.size()}});
  }
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("file            %s (%s)\n", file.c_str(), human_bytes(j["bytes"].get<uint64_t>()).c_str());
  std::string sidecar_text = sidecar_error.empty() ? "none" : sidecar_error;
  if (sidecar) {
    const FileDigest d = sidecar->current;
    sidecar_text = fmt::format("{} bytes, {} {}", d.bytes, algorithm_name(d.algorithm),
                               hex64(d.checksum));
  }
  std::printf("sidecar         %s\n", sidecar_text.c_str());
  std::printf("format_version  %lld\n", static_cast<long long>(m.format_version));
  std::printf("global_step     %lld (epoch %lld, batch %lld in epoch, %lld samples in epoch)\n",
              static_cast<long long>(m.global_step), static_cast<long long>(m.epoch),
              static_cast<long long>(m.batch_in_epoch), static_cast<long long>(m.samples_in_epoch));
  std::printf("world_size      %lld (batch size %lld per rank)%s\n",
              static_cast<long long>(m.world_size), static_cast<long long>(m.batch_size),
              m.weights_only ? ", weights only" : "");
  std::printf("versions        ddp-runtime %s, torch %s, hdf5 %s\n", m.ddp_runtime_version.c_str(),
              m.torch_version.c_str(), m.hdf5_version.c_str());
  std::printf("created_utc     %s\n", m.created_utc.c_str());
  std::printf("fingerprint     %s\n", m.fingerprint.c_str());
  if (const json& opt = j["optimizer"]; opt.is_object() && opt.contains("type")) {
    const int64_t stage = opt.value("zero_stage", int64_t{0});
    std::printf("optimizer       %s, ZeRO stage %lld%s\n", opt.value("type", "?").c_str(),
                static_cast<long long>(stage),
                stage > 0 ? " (its state was sharded over the ranks; this file holds all of it)"
                          : "");
  }
  std::printf("metrics         %s\n", metrics_text(m.metrics).c_str());
  std::printf("ranks           %zu\n", ranks.size());
  std::printf("tensors         %zu (%s)\n", reader.tensors().size(), human_bytes(tensor_bytes).c_str());
  for (const TensorInfo& t : reader.tensors()) {
    std::printf("  %-50s %-9s [%s]\n", t.path.c_str(), dtype_name(t.dtype),
                fmt::format("{}", fmt::join(t.shape, ", ")).c_str());
  }
  return kExitOk;
}

// Verifies one file; prints one line. Returns the exit code.
int verify_one(const std::string& file) {
  const VerifyResult r = verify_file(file);
  if (!r.ok()) {
    std::printf("FAIL  %s: %s\n", file.c_str(), r.error->what());
    return exit_code_for(r.error->kind());
  }
  std::printf("OK    %s (%lld datasets%s)\n", file.c_str(),
              static_cast<long long>(r.datasets_checked),
              r.verified_file ? ", whole-file checksum verified"
                              : "; WARNING: no sidecar, whole-file checksum not verified");
  return kExitOk;
}

int cmd_verify(const std::string& target) {
  if (!is_directory(target)) return verify_one(target);
  FileSystem& fs = default_file_system();
  int rc = kExitOk;
  auto fail = [&](int code) { if (rc == kExitOk) rc = code; };
  const std::vector<CheckpointInfo> list = list_checkpoints(fs, target);
  std::map<std::string, bool> ok;
  for (const CheckpointInfo& c : list) {
    const int code = verify_one(c.path);
    ok[c.file] = code == kExitOk;
    fail(code);
  }
  std::string warning;
  const std::optional<LatestPointer> latest = read_latest(fs, target, &warning);
  if (!warning.empty()) {
    std::printf("FAIL  %s\n", warning.c_str());
    fail(kExitIO);
  } else if (!latest) {
    std::printf("%s  no %s in %s\n", list.empty() ? "FAIL" : "WARN", kLatestFileName, target.c_str());
  } else {
    const bool good = ok.count(latest->file) && ok[latest->file];
    std::printf("%s  %s -> %s (step %lld)\n", good ? "OK  " : "FAIL", kLatestFileName,
                latest->file.c_str(), static_cast<long long>(latest->global_step));
    if (!good) fail(ok.count(latest->file) ? kExitIO : kExitInvalidInput);
    for (const CheckpointInfo& c : list) {
      if (c.file == latest->file && c.sidecar &&
          (c.checksum != latest->checksum || c.algorithm != latest->algorithm)) {
        std::printf("WARN  %s records checksum %s but %s's sidecar has %s (the name was re-used)\n",
                    kLatestFileName, hex64(latest->checksum).c_str(), c.file.c_str(),
                    hex64(c.checksum).c_str());
      }
    }
  }
  if (list.empty()) {
    std::printf("FAIL  no checkpoints in %s\n", target.c_str());
    fail(kExitInvalidInput);
  }
  return rc;
}

// Element i of a tensor as a double (16-bit floats decoded).
double element(const TensorEntry& t, size_t i) {
  const uint8_t* p = t.data.data() + i * dtype_size(t.dtype);
  auto load = [p](auto v) { std::memcpy(&v, p, sizeof(v)); return v; };
  switch (t.dtype) {
    case DType::kFloat32: return load(float{});
    case DType::kFloat64: return load(double{});
    case DType::kFloat16: return half_to_float(load(uint16_t{}));
    case DType::kBFloat16: return bf16_to_float(load(uint16_t{}));
    case DType::kInt32: return load(int32_t{});
    case DType::kInt64: return static_cast<double>(load(int64_t{}));
    case DType::kUInt8: return load(uint8_t{});
  }
  return 0;
}

int cmd_diff(const std::string& a_path, const std::string& b_path, bool all) {
  FileReader a(a_path), b(b_path);  // verified: corruption must not pass for a difference
  const CheckpointMeta &ma = a.meta(), &mb = b.meta();
  auto meta_diff = [](const char* name, const auto& x, const auto& y) {
    if (x != y) std::printf("meta  %s: %s vs %s\n", name, fmt::format("{}", x).c_str(),
                            fmt::format("{}", y).c_str());
  };
  meta_diff("global_step", ma.global_step, mb.global_step);
  meta_diff("epoch", ma.epoch, mb.epoch);
  meta_diff("world_size", ma.world_size, mb.world_size);
  meta_diff("fingerprint", ma.fingerprint, mb.fingerprint);
  meta_diff("metrics", metrics_text(ma.metrics), metrics_text(mb.metrics));
  int compared = 0, differ = 0, only_a = 0, only_b = 0, mismatched = 0;
  double worst = 0;
  std::string worst_path;
  for (const TensorInfo& ta : a.tensors()) {
    const TensorInfo* tb = b.find(ta.path);
    if (!tb) {
      std::printf("only in A  %s\n", ta.path.c_str());
      ++only_a;
      continue;
    }
    if (ta.dtype != tb->dtype || ta.shape != tb->shape) {
      std::printf("mismatch  %s: %s [%s] vs %s [%s]\n", ta.path.c_str(), dtype_name(ta.dtype),
                  fmt::format("{}", fmt::join(ta.shape, ", ")).c_str(), dtype_name(tb->dtype),
                  fmt::format("{}", fmt::join(tb->shape, ", ")).c_str());
      ++mismatched;
      continue;
    }
    const TensorEntry ea = a.read_tensor(ta.path), eb = b.read_tensor(ta.path);
    double max_diff = 0;
    size_t n_diff = 0;
    const size_t n = ea.data.size() / dtype_size(ea.dtype);
    for (size_t i = 0; i < n; ++i) {
      const double x = element(ea, i), y = element(eb, i);
      if (x == y || (std::isnan(x) && std::isnan(y))) continue;
      ++n_diff;
      const double d = std::fabs(x - y);
      max_diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(max_diff, d);
    }
    ++compared;
    if (n_diff > 0) ++differ;
    if (n_diff > 0 && max_diff >= worst) worst = max_diff, worst_path = ta.path;
    if (n_diff > 0 || all) {
      std::printf("%s  %s: max_abs_diff=%.6g (%zu of %zu elements differ)\n",
                  n_diff ? "differ" : "same  ", ta.path.c_str(), max_diff, n_diff, n);
    }
  }
  for (const TensorInfo& tb : b.tensors()) {
    if (!a.find(tb.path)) std::printf("only in B  %s\n", tb.path.c_str()), ++only_b;
  }
  std::printf("compared %d tensors: %d identical, %d differ%s; %d shape/dtype mismatches, "
              "%d only in A, %d only in B\n", compared, compared - differ, differ,
              differ ? fmt::format(" (largest max_abs_diff={:.6g} in {})", worst, worst_path).c_str()
                     : "",
              mismatched, only_a, only_b);
  return kExitOk;
}

}  // namespace
}  // namespace ddp::ckpt

int main(int argc, char** argv) {
  using namespace ddp;
  CLI::App app{"ddp-checkpoint: list, inspect, verify and compare ddp-runtime checkpoints"};
  app.require_subcommand(1);
  std::string dir, file, target, a, b;
  bool as_json = false, all = false;
  auto* ls = app.add_subcommand("ls", "list the checkpoints in a directory");
  ls->add_option("dir", dir, "checkpoint directory")->required();
  auto* inspect = app.add_subcommand("inspect", "metadata and tensors of one checkpoint");
  inspect->add_option("file", file, "checkpoint file (.h5)")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");
  auto* verify = app.add_subcommand("verify", "check checksums; exit 0 only if valid");
  verify->add_option("target", target, "checkpoint file, or a directory (all + latest.json)")
      ->required();
  auto* diff = app.add_subcommand("diff", "per-tensor differences between two checkpoints");
  diff->add_option("a", a, "first checkpoint")->required();
  diff->add_option("b", b, "second checkpoint")->required();
  diff->add_flag("--all", all, "also list identical tensors");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return e.get_exit_code() == 0 ? kExitOk : kExitInvalidInput;
  }
  try {
    if (ls->parsed()) return ckpt::cmd_ls(dir);
    if (inspect->parsed()) return ckpt::cmd_inspect(file, as_json);
    if (verify->parsed()) return ckpt::cmd_verify(target);
    return ckpt::cmd_diff(a, b, all);
  } catch (const Error& e) {
    std::fprintf(stderr, "ddp-checkpoint: %s: %s\n", error_kind_name(e.kind()), e.what());
    return exit_code_for(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddp-checkpoint: internal error: %s\n", e.what());
    return kExitInternal;
  }
}
