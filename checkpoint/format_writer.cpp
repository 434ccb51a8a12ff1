#include "checkpoint/format_writer.h"

#include <unistd.h>

#include "checkpoint/xxh3.h"

#include <algorithm>
#include <future>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "checkpoint/h5_check.h"
#include "checkpoint/h5_util.h"

namespace ddp::ckpt {

namespace {

// Pieces at least this large are hashed concurrently with their write (thread start-up is
// ~50 us; a 1 MiB write takes ~1 ms).
constexpr size_t kParallelHashBytes = 1u << 20;

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Selects the row-major element range [begin, end) of a dataspace with extents `dims` as a
// union of at most 2*rank-1 hyperslab boxes (contiguous layout => one sequential file region).
class RangeSelector {
 public:
  RangeSelector(hid_t space, const std::vector<hsize_t>& dims, const H5Context& ctx)
      : space_(space), dims_(dims), ctx_(ctx), start_(dims.size(), 0), count_(dims.size(), 1) {}

  void select(hsize_t begin, hsize_t end) { recurse(0, begin, end); }

 private:
  // [a, b) are offsets inside the block spanned by dims_[k..], at coordinates start_[0..k).
  void recurse(size_t k, hsize_t a, hsize_t b) {
    if (a == b) return;
    hsize_t stride = 1;
    for (size_t j = k + 1; j < dims_.size(); ++j) stride *= dims_[j];
    const hsize_t ia = a / stride, ib = b / stride, ra = a % stride, rb = b % stride;
    if (k + 1 == dims_.size()) return box(k, a, b - a);
    if (ia == ib) {
      start_[k] = ia;
      return recurse(k + 1, ra, rb);
    }
    hsize_t first_full = ia;
    if (ra != 0) {
      start_[k] = ia;
      recurse(k + 1, ra, stride);
      ++first_full;
    }
    if (ib > first_full) box(k, first_full, ib - first_full);
    if (rb != 0) {
      start_[k] = ib;
      recurse(k + 1, 0, rb);
    }
  }

  // Rows [row, row + rows) at dim k, all of dims k+1.., at the fixed coordinates before k.
  void box(size_t k, hsize_t row, hsize_t rows) {
    std::vector<hsize_t> start(start_.begin(), start_.end()), count(count_);
    start[k] = row;
    count[k] = rows;
    for (size_t j = k + 1; j < dims_.size(); ++j) {
      start[j] = 0;
      count[j] = dims_[j];
    }
    DDP_H5_CHECK(H5Sselect_hyperslab(space_, first_ ? H5S_SELECT_SET : H5S_SELECT_OR,
                                     start.data(), nullptr, count.data(), nullptr), ctx_);
    first_ = false;
  }

  hid_t space_;
  const std::vector<hsize_t>& dims_;
  const H5Context& ctx_;
  std::vector<hsize_t> start_, count_;
  bool first_ = true;
};

}  // namespace

void check_tensor_path(const std::string& path) {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorKind::kInvalidArgument, fmt::format("tensor path \"{}\": {}", path, why));
  };
  if (path.empty()) bad("empty");
  size_t pos = 0;
  while (true) {
    const size_t slash = path.find('/', pos);
    const std::string part = path.substr(pos, slash == std::string::npos ? slash : slash - pos);
    if (part.empty() || part == "." || part == "..")
      bad("components must be non-empty and not '.' or '..'");
    if (pos == 0 && (part == "meta" || part == "metrics" || part == "ranks"))
      bad(fmt::format("'{}' is reserved for the checkpoint's own data", part));
    if (slash == std::string::npos) break;
    pos = slash + 1;
  }
  if (path.find('/') == std::string::npos) bad("must be inside a group, e.g. \"model/<key>\"");
}

struct FileWriter::Impl {
  H5Context ctx;
  H5FileHandle file;
  H5PlistHandle dcpl;             // contiguous, allocated at creation (its file offset is known
                                  // at once), never filled: the writer overwrites every byte
  BlockDigests blocks;            // of the file blocks wholly inside tensor data written
  std::set<std::string> groups;   // created so far ("model", "optimizer/x", ...)
  std::set<std::string> datasets;
  int64_t next_index = 0;         // "index" attribute: write order, restored by the reader
  uint64_t tensor_bytes = 0;
  bool closed = false;

  struct Open {  // the tensor between begin_tensor and end_tensor
    std::string path;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<hsize_t> dims;
    H5DatasetHandle dset;
    hsize_t total = 0, written = 0;  // elements
    size_t elem = 0;
    std::string carry;               // a partial element from the previous append
    uint64_t expected = 0;
    std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> hash{nullptr,
                                                                           &XXH3_freeState};
    // The file blocks inside this tensor's bytes, hashed as they are written: null when the
    // tensor spans no whole block, or when HDF5 converts its bytes (file type != memory type).
    std::unique_ptr<RegionBlockHasher> blocks;
  };
  std::unique_ptr<Open> open;

  // Creates every missing group along `path` (which names a dataset).
  void make_parents(const std::string& path) {
    for (size_t slash = path.find('/'); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      const std::string group = path.substr(0, slash);
      if (datasets.count(group)) {
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("tensor path \"{}\": \"{}\" is already a tensor", path, group));
      }
      if (groups.insert(group).second) {
        H5GroupHandle g(DDP_H5_CHECK(
            H5Gcreate2(file.get(), group.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), ctx));
        g.close("H5Gclose", ctx);
      }
    }
  }

  void write_elements(const void* data, hsize_t count) {
    if (count == 0) return;
    Open& t = *open;
    const hid_t mem_type = h5_types_for(t.dtype).memory;
    if (t.written == 0 && count == t.total) {
      DDP_H5_CHECK(H5Dwrite(t.dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), ctx);
    } else {
      H5SpaceHandle file_space(DDP_H5_CHECK(H5Dget_space(t.dset.get()), ctx));
      RangeSelector(file_space.get(), t.dims, ctx).select(t.written, t.written + count);
      H5SpaceHandle mem_space(DDP_H5_CHECK(H5Screate_simple(1, &count, nullptr), ctx));
      DDP_H5_CHECK(H5Dwrite(t.dset.get(), mem_type, mem_space.get(), file_space.get(),
                            H5P_DEFAULT, data), ctx);
    }
    t.written += count;
  }
};

FileWriter::FileWriter(const std::string& path, const CheckpointMeta& meta)
    : impl_(std::make_unique<Impl>()) {
  h5_quiet_this_thread();
  Impl& s = *impl_;
  s.ctx = H5Context{path, ErrorKind::kIOError};
  const H5Context& ctx = s.ctx;
  const H5PlistHandle fapl = checkpoint_file_access(ctx);
  s.file = H5FileHandle(
      DDP_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), ctx));
  s.dcpl = H5PlistHandle(DDP_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), ctx));
  DDP_H5_CHECK(H5Pset_layout(s.dcpl.get(), H5D_CONTIGUOUS), ctx);
  DDP_H5_CHECK(H5Pset_alloc_time(s.dcpl.get(), H5D_ALLOC_TIME_EARLY), ctx);
  DDP_H5_CHECK(H5Pset_fill_time(s.dcpl.get(), H5D_FILL_TIME_NEVER), ctx);

  const hid_t root = s.file.get();
  write_int64_attr(root, "format_version", meta.format_version, ctx);
  write_int64_attr(root, "global_step", meta.global_step, ctx);
  write_int64_attr(root, "epoch", meta.epoch, ctx);
  write_int64_attr(root, "world_size", meta.world_size, ctx);
  write_int64_attr(root, "batch_in_epoch", meta.batch_in_epoch, ctx);
  write_int64_attr(root, "samples_in_epoch", meta.samples_in_epoch, ctx);
  write_int64_attr(root, "batch_size", meta.batch_size, ctx);
  write_int64_attr(root, "weights_only", meta.weights_only ? 1 : 0, ctx);
  write_string_attr(root, "ddp_runtime_version", meta.ddp_runtime_version, ctx);
  write_string_attr(root, "torch_version", meta.torch_version, ctx);
  write_string_attr(root, "hdf5_version",
                    meta.hdf5_version.empty() ? h5_library_version() : meta.hdf5_version, ctx);
  write_string_attr(root, "created_utc", meta.created_utc, ctx);
  write_string_attr(root, "fingerprint", meta.fingerprint, ctx);

  // Long texts are datasets: attributes are limited to 64 KiB in the default file format.
  H5GroupHandle meta_group(
      DDP_H5_CHECK(H5Gcreate2(root, "meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), ctx));
  write_string_dataset(meta_group.get(), "config_yaml", meta.config_yaml, ctx);
  write_string_dataset(meta_group.get(), "hparams_json", meta.hparams_json, ctx);
  write_string_dataset(meta_group.get(), "optimizer_json", meta.optimizer_json, ctx);
  write_string_dataset(meta_group.get(), "scheduler_json", meta.scheduler_json, ctx);
  write_string_dataset(meta_group.get(), "callbacks_json", meta.callbacks_json, ctx);
  if (!meta.grad_scaler_json.empty()) {  // optional: only runs with a loss scaler have one
    write_string_dataset(meta_group.get(), "grad_scaler_json", meta.grad_scaler_json, ctx);
  }
  meta_group.close("H5Gclose", ctx);

  H5GroupHandle metrics(
      DDP_H5_CHECK(H5Gcreate2(root, "metrics", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), ctx));
  for (const auto& [name, value] : meta.metrics) {
    if (name.empty() || name == ".") {
      throw Error(ErrorKind::kInvalidArgument, fmt::format("metric name \"{}\" is not allowed", name));
    }
    write_double_attr(metrics.get(), name.c_str(), value, ctx);
  }
  metrics.close("H5Gclose", ctx);
}

// A writer destroyed before close() succeeded holds a file nobody will read (a failed save;
// the caller removes it). Its bytes are freed first: HDF5's close flushes metadata, and on a
// full disk that flush fails, which leaves the file half-closed inside libhdf5, where
// H5_term_library then crashes at exit. With the data gone the flush has room. The handles
// then close quietly, innermost first.
FileWriter::~FileWriter() {
  if (!impl_ || impl_->closed || !impl_->file.valid()) return;
  impl_->open.reset();
  void* handle = nullptr;
  // Checked by hand: an error path, where a failure only means the space is not freed early.
  if (H5Fget_vfd_handle(impl_->file.get(), H5P_DEFAULT, &handle) >= 0 && handle != nullptr) {
    (void)::ftruncate(*static_cast<int*>(handle), 0);  // sec2 driver: an int file descriptor
  }
  H5Eclear2(H5E_DEFAULT);
}

const std::string& FileWriter::path() const { return impl_->ctx.file; }
const BlockDigests& FileWriter::block_digests() const { return impl_->blocks; }
uint64_t FileWriter::tensor_bytes_written() const { return impl_->tensor_bytes; }

void FileWriter::add_tensor(const TensorEntry& entry) {
  add_tensor(entry.path, entry.dtype, entry.shape, entry.data.data(), entry.data.size(),
             entry.checksum);
}

void FileWriter::add_tensor(const std::string& path, DType dtype,
                            const std::vector<int64_t>& shape, const void* data, size_t bytes,
                            uint64_t expected_checksum) {
  begin_tensor(path, dtype, shape, expected_checksum);
  append_tensor_data(data, bytes);
  end_tensor();
}

void FileWriter::begin_tensor(const std::string& path, DType dtype,
                              const std::vector<int64_t>& shape, uint64_t expected_checksum,
                              Checksum mode) {
  Impl& s = *impl_;
  if (s.closed) throw Error(ErrorKind::kInternal, fmt::format("'{}': writer is closed", s.ctx.file));
  if (s.open) {
    throw Error(ErrorKind::kInternal, fmt::format("begin_tensor(\"{}\") while \"{}\" is open",
                                                  path, s.open->path));
  }
  check_tensor_path(path);
  if (s.datasets.count(path) || s.groups.count(path)) {
    throw Error(ErrorKind::kInvalidArgument, fmt::format("tensor path \"{}\" written twice", path));
  }
  auto t = std::make_unique<Impl::Open>();
  t->path = path;
  t->dtype = dtype;
  t->shape = shape;
  t->elem = dtype_size(dtype);
  t->total = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("tensor \"{}\": negative dimension in shape {}", path, shape_text(shape)));
    }
    t->dims.push_back(static_cast<hsize_t>(d));
    t->total *= static_cast<hsize_t>(d);
  }
  t->expected = expected_checksum;
  if (expected_checksum == 0 || mode == Checksum::kVerify) {
    t->hash.reset(XXH3_createState());
    if (!t->hash) throw Error(ErrorKind::kInternal, "XXH3_createState failed (out of memory)");
    XXH3_64bits_reset(t->hash.get());
  }

  s.make_parents(path);
  H5SpaceHandle space(DDP_H5_CHECK(
      shape.empty() ? H5Screate(H5S_SCALAR)
                    : H5Screate_simple(static_cast<int>(t->dims.size()), t->dims.data(), nullptr),
      s.ctx));
  t->dset = H5DatasetHandle(DDP_H5_CHECK(H5Dcreate2(s.file.get(), path.c_str(),
                                                    h5_types_for(dtype).file, space.get(),
                                                    H5P_DEFAULT, s.dcpl.get(), H5P_DEFAULT),
                                         s.ctx));
  s.datasets.insert(path);
  const uint64_t bytes = t->total * t->elem;
  const H5Types types = h5_types_for(dtype);
  if (bytes >= kChecksumBlockBytes &&
      DDP_H5_CHECK(H5Tequal(types.file, types.memory), s.ctx) > 0) {
    const haddr_t offset = H5Dget_offset(t->dset.get());  // HADDR_UNDEF: not allocated
    if (offset != HADDR_UNDEF) {
      t->blocks = std::make_unique<RegionBlockHasher>(offset, offset + bytes, &s.blocks);
    }
  }
  write_string_attr(t->dset.get(), "dtype", dtype_name(dtype), s.ctx);
  write_int64_attr(t->dset.get(), "index", s.next_index++, s.ctx);
  s.open = std::move(t);
}

void FileWriter::append_tensor_data(const void* data, size_t bytes) {
  Impl& s = *impl_;
  if (!s.open) throw Error(ErrorKind::kInternal, "append_tensor_data without begin_tensor");
  Impl::Open& t = *s.open;
  const uint64_t have = t.written * t.elem + t.carry.size();
  if (have + bytes > t.total * t.elem) {
    const std::string message =
        fmt::format("tensor \"{}\": shape {} {} holds {} bytes, got at least {}", t.path,
                    shape_text(t.shape), dtype_name(t.dtype), t.total * t.elem, have + bytes);
    s.open.reset();  // abandoned: the dataset keeps no checksum, so it never verifies
    throw Error(ErrorKind::kInvalidArgument, message);
  }
  // Large pieces are hashed on a helper thread while this one writes them (both only read
  // `data`): the checksums then cost no save time. The future joins on every exit path.
  std::future<void> hashing;
  XXH3_state_t* state = t.hash.get();  // null: the expected checksum is stored, not verified
  RegionBlockHasher* blocks = t.blocks.get();
  auto hash = [state, blocks, data, bytes] {
    if (state) XXH3_64bits_update(state, data, bytes);
    if (blocks) blocks->feed(data, bytes);
  };
  if ((state || blocks) && bytes >= kParallelHashBytes) {
    hashing = std::async(std::launch::async, hash);
  } else {
    hash();
  }
  const char* p = static_cast<const char*>(data);
  if (!t.carry.empty()) {  // complete the element split by the previous piece
    const size_t take = std::min(bytes, t.elem - t.carry.size());
    t.carry.append(p, take);
    p += take;
    bytes -= take;
    if (t.carry.size() < t.elem) return;
    s.write_elements(t.carry.data(), 1);
    t.carry.clear();
    s.tensor_bytes += t.elem;
  }
  const hsize_t whole = bytes / t.elem;
  s.write_elements(p, whole);
  t.carry.assign(p + whole * t.elem, bytes - whole * t.elem);
  s.tensor_bytes += whole * t.elem;
  if (hashing.valid()) hashing.get();
}

uint64_t FileWriter::end_tensor() {
  Impl& s = *impl_;
  if (!s.open) throw Error(ErrorKind::kInternal, "end_tensor without begin_tensor");
  std::unique_ptr<Impl::Open> t = std::move(s.open);
  if (t->written != t->total) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("tensor \"{}\": shape {} {} needs {} bytes, got {}", t->path,
                            shape_text(t->shape), dtype_name(t->dtype), t->total * t->elem,
                            t->written * t->elem + t->carry.size()));
  }
  const uint64_t digest = t->hash ? XXH3_64bits_digest(t->hash.get()) : t->expected;
  if (t->expected != 0 && t->expected != digest) {
    throw Error(ErrorKind::kInternal,
                fmt::format("tensor \"{}\": the bytes being written hash to {}, but were "
                            "snapshotted with checksum {} (memory corruption)",
                            t->path, hex64(digest), hex64(t->expected)));
  }
  write_uint64_attr(t->dset.get(), "xxh3", digest, s.ctx);
  t->dset.close("H5Dclose", s.ctx);
  return digest;
}

void FileWriter::add_rank_state(const RankState& state) {
  Impl& s = *impl_;
  if (s.open) throw Error(ErrorKind::kInternal, "add_rank_state while a tensor is open");
  const std::string group = fmt::format("ranks/{}", state.rank);
  if (state.rank < 0 || s.groups.count(group)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("rank state for rank {}: negative or written twice", state.rank));
  }
  // Datasets named "ranks/..." bypass check_tensor_path's reservation: this is the owner.
  auto write_bytes = [&](const std::string& path, const std::vector<uint8_t>& bytes) {
    s.make_parents(path);
    const hsize_t n = bytes.size();
    H5SpaceHandle space(DDP_H5_CHECK(H5Screate_simple(1, &n, nullptr), s.ctx));
    H5DatasetHandle d(DDP_H5_CHECK(H5Dcreate2(s.file.get(), path.c_str(), H5T_STD_U8LE,
                                              space.get(), H5P_DEFAULT, s.dcpl.get(),
                                              H5P_DEFAULT), s.ctx));
    s.datasets.insert(path);
    if (n > 0) {
      DDP_H5_CHECK(H5Dwrite(d.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                            bytes.data()), s.ctx);
    }
    write_string_attr(d.get(), "dtype", dtype_name(DType::kUInt8), s.ctx);
    write_uint64_attr(d.get(), "xxh3", checksum_bytes(bytes.data(), bytes.size()), s.ctx);
    d.close("H5Dclose", s.ctx);
  };
  write_bytes(group + "/cpu_rng", state.cpu_rng);
  write_bytes(group + "/cuda_rng", state.cuda_rng);
  H5GroupHandle g(DDP_H5_CHECK(H5Gopen2(s.file.get(), group.c_str(), H5P_DEFAULT), s.ctx));
  write_int64_attr(g.get(), "sampler_epoch", state.sampler_epoch, s.ctx);
  write_int64_attr(g.get(), "sampler_index", state.sampler_index, s.ctx);
  g.close("H5Gclose", s.ctx);
}

void FileWriter::close() {
  Impl& s = *impl_;
  if (s.closed) return;
  if (s.open) {
    throw Error(ErrorKind::kInternal,
                fmt::format("close() of '{}' while tensor \"{}\" is open", s.ctx.file, s.open->path));
  }
  s.dcpl.close("H5Pclose", s.ctx);
  DDP_H5_CHECK(H5Fflush(s.file.get(), H5F_SCOPE_GLOBAL), s.ctx);
  s.file.close("H5Fclose", s.ctx);
  s.closed = true;
}

}  // namespace ddp::ckpt
