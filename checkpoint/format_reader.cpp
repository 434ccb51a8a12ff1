#include "checkpoint/format_reader.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "checkpoint/file_system.h"
#include "checkpoint/h5_check.h"
#include "checkpoint/h5_util.h"
#include "checkpoint/sidecar.h"

namespace ddp::ckpt {

namespace {

const char* const kMetaStrings[] = {"config_yaml", "hparams_json", "optimizer_json",
                                    "scheduler_json", "callbacks_json"};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// H5Ovisit2 callback: collects dataset and group paths (relative to the root). No throwing
// across HDF5's C frames: it only records.
struct Visit {
  std::vector<std::string> datasets;
  std::vector<std::string> groups;
};
herr_t visit_object(hid_t, const char* name, const H5O_info_t* info, void* data) {
  auto* v = static_cast<Visit*>(data);
  if (info->type == H5O_TYPE_DATASET) v->datasets.emplace_back(name);
  if (info->type == H5O_TYPE_GROUP && std::string(name) != ".") v->groups.emplace_back(name);
  return 0;
}

}  // namespace

struct FileReader::Impl {
  std::string path;
  H5Context ctx;  // kCorruption: the file exists, so a failure to read it back is damage
  H5FileHandle file;
  CheckpointMeta meta;
  bool verified_file = false;
  Visit visit;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t> by_path;

  void read_data(const std::string& dataset, DType dtype, void* dst, size_t bytes,
                 bool verify) const {
    H5DatasetHandle d(DDP_H5_CHECK(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), ctx));
    H5TypeHandle stored(DDP_H5_CHECK(H5Dget_type(d.get()), ctx));
    const size_t stored_size = DDP_H5_CHECK(H5Tget_size(stored.get()), ctx);
    if (stored_size != dtype_size(dtype)) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("checkpoint '{}': dataset '/{}' is stored with {}-byte elements "
                              "but its dtype attribute says {}", path, dataset, stored_size,
                              dtype_name(dtype)));
    }
    if (bytes > 0) {
      DDP_H5_CHECK(H5Dread(d.get(), h5_types_for(dtype).memory, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           dst), ctx);
    }
    if (!verify) return;
    const std::string where = fmt::format("dataset '/{}'", dataset);
    const uint64_t recorded = read_uint64_attr(d.get(), "xxh3", where, ctx);
    const uint64_t actual = checksum_bytes(dst, bytes);
    if (recorded != actual) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("checkpoint '{}': dataset '/{}' is corrupt: checksum mismatch: "
                              "recorded {}, data has {}", path, dataset, hex64(recorded),
                              hex64(actual)));
    }
  }

  // Shape, dtype and checksum of a dataset from its dataspace and attributes.
  TensorInfo info_of(const std::string& dataset, int64_t* index) const {
    const std::string where = fmt::format("dataset '/{}'", dataset);
    H5DatasetHandle d(DDP_H5_CHECK(H5Dopen2(file.get(), dataset.c_str(), H5P_DEFAULT), ctx));
    TensorInfo t;
    t.path = dataset;
    t.dtype = dtype_from_name(read_string_attr(d.get(), "dtype", where, ctx),
                              fmt::format("checkpoint '{}': {}", path, where));
    t.checksum = read_uint64_attr(d.get(), "xxh3", where, ctx);
    *index = has_attr(d.get(), "index", ctx) ? read_int64_attr(d.get(), "index", where, ctx)
                                             : INT64_MAX;
    H5SpaceHandle space(DDP_H5_CHECK(H5Dget_space(d.get()), ctx));
    const int rank = DDP_H5_CHECK(H5Sget_simple_extent_ndims(space.get()), ctx);
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    DDP_H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), ctx);
    // The dataspace is only a claim: the bytes must be in the file (the writer stores every
    // dataset contiguously and in full), so a damaged header cannot make a reader allocate
    // more than the file holds, nor overflow the size.
    uint64_t numel = 1;
    bool overflow = false;
    for (hsize_t n : dims) {
      t.shape.push_back(static_cast<int64_t>(n));
      overflow |= __builtin_mul_overflow(numel, n, &numel);
    }
    overflow |= __builtin_mul_overflow(numel, dtype_size(t.dtype), &t.bytes);
    const uint64_t stored = H5Dget_storage_size(d.get());
    if (overflow || stored != t.bytes) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("checkpoint '{}': {} claims shape [{}] {} but stores {} bytes",
                              path, where, fmt::join(t.shape, ", "), dtype_name(t.dtype),
                              stored));
    }
    return t;
  }
};

FileReader::FileReader(const std::string& path, const ReadOptions& options)
    : impl_(std::make_unique<Impl>()) {
  h5_quiet_this_thread();
  Impl& s = *impl_;
  s.path = path;
  s.ctx = H5Context{path, ErrorKind::kCorruption};
  FileSystem& fs = default_file_system();
  // (a)
  if (!fs.exists(path)) {
    throw Error(ErrorKind::kNotFound, fmt::format("checkpoint '{}' does not exist", path));
  }
  // (b)
  if (options.verify_file_checksum) s.verified_file = verify_against_sidecar(fs, path);
  // (c)
  const H5Context probe{path, ErrorKind::kIOError};  // H5Fis_hdf5 < 0: could not read at all
  if (DDP_H5_CHECK(H5Fis_hdf5(path.c_str()), probe) <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}' is not an HDF5 file, so not a ddp-runtime checkpoint", path));
  }
  const H5PlistHandle fapl = checkpoint_file_access(s.ctx);
  s.file = H5FileHandle(DDP_H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), s.ctx));
  const hid_t root = s.file.get();
  const std::string where = "the root group";
  if (!has_attr(root, "format_version", s.ctx)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}' is an HDF5 file but not a ddp-runtime checkpoint (no root "
                            "attribute 'format_version')", path));
  }
  CheckpointMeta& m = s.meta;
  m.format_version = read_int64_attr(root, "format_version", where, s.ctx);
  if (m.format_version > kFormatVersion) {
    throw Error(ErrorKind::kNewerVersion,
                fmt::format("'{}' was written by a newer ddp-runtime (format {}, this build reads "
                            "up to {}); upgrade ddp-runtime to load it", path, m.format_version,
                            kFormatVersion));
  }
  if (m.format_version < 1) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}' has format_version {}, which no ddp-runtime writes", path,
                            m.format_version));
  }
  m.global_step = read_int64_attr(root, "global_step", where, s.ctx);
  m.epoch = read_int64_attr(root, "epoch", where, s.ctx);
  m.world_size = read_int64_attr(root, "world_size", where, s.ctx);
  m.batch_in_epoch = read_int64_attr(root, "batch_in_epoch", where, s.ctx);
  m.samples_in_epoch = read_int64_attr(root, "samples_in_epoch", where, s.ctx);
  m.batch_size = read_int64_attr(root, "batch_size", where, s.ctx);
  m.weights_only = read_int64_attr(root, "weights_only", where, s.ctx) != 0;
  m.ddp_runtime_version = read_string_attr(root, "ddp_runtime_version", where, s.ctx);
  m.torch_version = read_string_attr(root, "torch_version", where, s.ctx);
  m.hdf5_version = read_string_attr(root, "hdf5_version", where, s.ctx);
  m.created_utc = read_string_attr(root, "created_utc", where, s.ctx);
  m.fingerprint = read_string_attr(root, "fingerprint", where, s.ctx);
  std::string* texts[] = {&m.config_yaml, &m.hparams_json, &m.optimizer_json, &m.scheduler_json,
                          &m.callbacks_json};
  for (size_t i = 0; i < std::size(kMetaStrings); ++i) {
    *texts[i] = read_string_dataset(root, std::string("meta/") + kMetaStrings[i],
                                    options.verify_tensor_checksums, s.ctx);
  }
  // Optional (files without a loss scaler, and files from before it existed, lack it).
  if (DDP_H5_CHECK(H5Lexists(root, "meta/grad_scaler_json", H5P_DEFAULT), s.ctx) > 0) {
    m.grad_scaler_json = read_string_dataset(root, "meta/grad_scaler_json",
                                             options.verify_tensor_checksums, s.ctx);
  }
  H5GroupHandle metrics(DDP_H5_CHECK(H5Gopen2(root, "metrics", H5P_DEFAULT), s.ctx));
  for (const std::string& name : attr_names(metrics.get(), s.ctx)) {
    m.metrics[name] = read_double_attr(metrics.get(), name.c_str(), "group '/metrics'", s.ctx);
  }

  DDP_H5_CHECK(H5Ovisit2(root, H5_INDEX_NAME, H5_ITER_INC, visit_object, &s.visit,
                         H5O_INFO_BASIC), s.ctx);
  std::vector<std::pair<int64_t, TensorInfo>> found;
  for (const std::string& d : s.visit.datasets) {
    if (starts_with(d, "meta/") || starts_with(d, "ranks/")) continue;
    int64_t index = 0;
    TensorInfo info = s.info_of(d, &index);
    found.emplace_back(index, std::move(info));
  }
  std::stable_sort(found.begin(), found.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [index, info] : found) {
    s.by_path[info.path] = s.tensors.size();
    s.tensors.push_back(std::move(info));
  }
}

FileReader::~FileReader() = default;

const std::string& FileReader::path() const { return impl_->path; }
const CheckpointMeta& FileReader::meta() const { return impl_->meta; }
bool FileReader::verified_file() const { return impl_->verified_file; }
const std::vector<TensorInfo>& FileReader::tensors() const { return impl_->tensors; }

const TensorInfo* FileReader::find(const std::string& path) const {
  auto it = impl_->by_path.find(path);
  return it == impl_->by_path.end() ? nullptr : &impl_->tensors[it->second];
}

void FileReader::read_tensor_into(const std::string& path, void* dst, size_t bytes,
                                  bool verify_checksum) const {
  const TensorInfo* info = find(path);
  if (!info) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("checkpoint '{}' has no tensor '{}'", impl_->path, path));
  }
  if (bytes != info->bytes) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("tensor '{}': saved shape [{}] {} is {} bytes, buffer is {}", path,
                            fmt::join(info->shape, ", "), dtype_name(info->dtype), info->bytes,
                            bytes));
  }
  impl_->read_data(path, info->dtype, dst, bytes, verify_checksum);
}

TensorEntry FileReader::read_tensor(const std::string& path, bool verify_checksum) const {
  const TensorInfo* info = find(path);
  if (!info) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("checkpoint '{}' has no tensor '{}'", impl_->path, path));
  }
  TensorEntry e;
  e.path = info->path;
  e.dtype = info->dtype;
  e.shape = info->shape;
  e.checksum = info->checksum;
  e.data.resize(info->bytes);
  read_tensor_into(path, e.data.data(), e.data.size(), verify_checksum);
  return e;
}

std::vector<RankState> FileReader::read_ranks(bool verify_checksum) const {
  const Impl& s = *impl_;
  std::vector<RankState> out;
  for (const std::string& g : s.visit.groups) {
    if (!starts_with(g, "ranks/") || g.find('/', 6) != std::string::npos) continue;
    RankState r;
    try {
      r.rank = std::stoll(g.substr(6));
    } catch (const std::exception&) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("checkpoint '{}': group '/{}' is not named by a rank", s.path, g));
    }
    for (auto [name, bytes] : {std::pair{"cpu_rng", &r.cpu_rng}, {"cuda_rng", &r.cuda_rng}}) {
      int64_t unused;
      const TensorInfo info = s.info_of(g + "/" + name, &unused);
      bytes->resize(info.bytes);
      s.read_data(info.path, DType::kUInt8, bytes->data(), bytes->size(), verify_checksum);
    }
    H5GroupHandle group(DDP_H5_CHECK(H5Gopen2(s.file.get(), g.c_str(), H5P_DEFAULT), s.ctx));
    const std::string where = fmt::format("group '/{}'", g);
    r.sampler_epoch = read_int64_attr(group.get(), "sampler_epoch", where, s.ctx);
    r.sampler_index = read_int64_attr(group.get(), "sampler_index", where, s.ctx);
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(),
            [](const RankState& a, const RankState& b) { return a.rank < b.rank; });
  return out;
}

CheckpointMeta read_meta(const std::string& path) {
  ReadOptions options;
  options.verify_file_checksum = false;
  options.verify_tensor_checksums = false;
  return FileReader(path, options).meta();
}

Checkpoint read_checkpoint(const std::string& path, const ReadOptions& options) {
  FileReader reader(path, options);
  Checkpoint c;
  c.meta = reader.meta();
  c.verified_file = reader.verified_file();
  for (const TensorInfo& t : reader.tensors()) {
    if (!options.include_optimizer && starts_with(t.path, "optimizer/")) continue;
    if (!starts_with(t.path, options.path_prefix)) continue;
    c.tensors.push_back(reader.read_tensor(t.path, options.verify_tensor_checksums));
  }
  if (options.include_ranks) c.ranks = reader.read_ranks(options.verify_tensor_checksums);
  return c;
}

std::vector<std::string> list_tensors(const std::string& path) {
  ReadOptions options;
  options.verify_file_checksum = false;
  options.verify_tensor_checksums = false;
  const FileReader reader(path, options);
  std::vector<std::string> out;
  for (const TensorInfo& t : reader.tensors()) out.push_back(t.path);
  return out;
}

VerifyResult verify_file(const std::string& path) {
  VerifyResult result;
  try {
    FileReader reader(path);  // whole-file checksum and /meta checksums
    result.verified_file = reader.verified_file();
    result.datasets_checked = static_cast<int64_t>(std::size(kMetaStrings));
    std::vector<uint8_t> buffer;
    for (const TensorInfo& t : reader.tensors()) {
      buffer.resize(t.bytes);
      reader.read_tensor_into(t.path, buffer.data(), buffer.size(), true);
      ++result.datasets_checked;
    }
    result.datasets_checked += 2 * static_cast<int64_t>(reader.read_ranks(true).size());
  } catch (const Error& e) {
    result.error = e;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: the contract is "never throws"
    result.error = Error(ErrorKind::kInternal, fmt::format("verifying '{}': {}", path, e.what()));
  }
  return result;
}

}  // namespace ddp::ckpt
