#include "checkpoint/h5_util.h"

#include <algorithm>

#include <fmt/format.h>

#include "checkpoint/checkpoint_data.h"

namespace ddp::ckpt {

H5Types h5_types_for(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::kFloat64: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case DType::kFloat16:
    case DType::kBFloat16: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case DType::kInt32: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::kInt64: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case DType::kUInt8: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
  }
  throw Error(ErrorKind::kInternal, "h5_types_for: unknown dtype");
}

DType dtype_from_name(const std::string& name, const std::string& where) {
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                  DType::kInt32, DType::kInt64, DType::kUInt8}) {
    if (name == dtype_name(d)) return d;
  }
  throw Error(ErrorKind::kCorruption, fmt::format("{}: unknown dtype \"{}\"", where, name));
}

bool has_attr(hid_t loc, const char* name, const H5Context& ctx) {
  return DDP_H5_CHECK(H5Aexists(loc, name), ctx) > 0;
}

namespace {

void write_scalar_attr(hid_t loc, const char* name, hid_t file_type, hid_t mem_type,
                       const void* value, const H5Context& ctx) {
  H5SpaceHandle space(DDP_H5_CHECK(H5Screate(H5S_SCALAR), ctx));
  H5AttrHandle attr(DDP_H5_CHECK(
      H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), ctx));
  DDP_H5_CHECK(H5Awrite(attr.get(), mem_type, value), ctx);
  attr.close("H5Aclose", ctx);
}

H5AttrHandle open_attr(hid_t loc, const char* name, const std::string& where,
                       const H5Context& ctx) {
  if (!has_attr(loc, name, ctx)) {
    throw Error(ctx.kind, fmt::format("'{}': {} has no attribute '{}'", ctx.file, where, name));
  }
  return H5AttrHandle(DDP_H5_CHECK(H5Aopen(loc, name, H5P_DEFAULT), ctx));
}

// H5Aread writes one element per point of the attribute's dataspace: every reader passes a
// buffer for exactly one, so a damaged file claiming more must be refused before the read.
void require_scalar_attr(const H5AttrHandle& attr, const char* name, const std::string& where,
                         const H5Context& ctx) {
  H5SpaceHandle space(DDP_H5_CHECK(H5Aget_space(attr.get()), ctx));
  if (DDP_H5_CHECK(H5Sget_simple_extent_npoints(space.get()), ctx) != 1) {
    throw Error(ctx.kind, fmt::format("'{}': attribute '{}' of {} is not a scalar", ctx.file,
                                      name, where));
  }
}

template <typename T>
T read_scalar_attr(hid_t loc, const char* name, hid_t mem_type, const std::string& where,
                   const H5Context& ctx) {
  H5AttrHandle attr = open_attr(loc, name, where, ctx);
  require_scalar_attr(attr, name, where, ctx);
  T value{};
  DDP_H5_CHECK(H5Aread(attr.get(), mem_type, &value), ctx);
  return value;
}

herr_t collect_attr_name(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

}  // namespace

void write_int64_attr(hid_t loc, const char* name, int64_t value, const H5Context& ctx) {
  write_scalar_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, ctx);
}

void write_uint64_attr(hid_t loc, const char* name, uint64_t value, const H5Context& ctx) {
  write_scalar_attr(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value, ctx);
}

void write_double_attr(hid_t loc, const char* name, double value, const H5Context& ctx) {
  write_scalar_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, ctx);
}

void write_string_attr(hid_t loc, const char* name, const std::string& value,
                       const H5Context& ctx) {
  H5TypeHandle type(DDP_H5_CHECK(H5Tcopy(H5T_C_S1), ctx));
  DDP_H5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE), ctx);
  DDP_H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8), ctx);
  const char* ptr = value.c_str();
  write_scalar_attr(loc, name, type.get(), type.get(), &ptr, ctx);
}

int64_t read_int64_attr(hid_t loc, const char* name, const std::string& where,
                        const H5Context& ctx) {
  return read_scalar_attr<int64_t>(loc, name, H5T_NATIVE_INT64, where, ctx);
}

uint64_t read_uint64_attr(hid_t loc, const char* name, const std::string& where,
                          const H5Context& ctx) {
  return read_scalar_attr<uint64_t>(loc, name, H5T_NATIVE_UINT64, where, ctx);
}

double read_double_attr(hid_t loc, const char* name, const std::string& where,
                        const H5Context& ctx) {
  return read_scalar_attr<double>(loc, name, H5T_NATIVE_DOUBLE, where, ctx);
}

std::string read_string_attr(hid_t loc, const char* name, const std::string& where,
                             const H5Context& ctx) {
  H5AttrHandle attr = open_attr(loc, name, where, ctx);
  H5TypeHandle stored(DDP_H5_CHECK(H5Aget_type(attr.get()), ctx));
  if (DDP_H5_CHECK(H5Tget_class(stored.get()), ctx) != H5T_STRING) {
    throw Error(ctx.kind, fmt::format("'{}': attribute '{}' of {} is not a string", ctx.file,
                                      name, where));
  }
  require_scalar_attr(attr, name, where, ctx);
  if (DDP_H5_CHECK(H5Tis_variable_str(stored.get()), ctx) > 0) {
    H5TypeHandle mem(DDP_H5_CHECK(H5Tcopy(H5T_C_S1), ctx));
    DDP_H5_CHECK(H5Tset_size(mem.get(), H5T_VARIABLE), ctx);
    DDP_H5_CHECK(H5Tset_cset(mem.get(), DDP_H5_CHECK(H5Tget_cset(stored.get()), ctx)), ctx);
    char* ptr = nullptr;
    DDP_H5_CHECK(H5Aread(attr.get(), mem.get(), &ptr), ctx);
    std::string out = ptr ? ptr : "";
    if (ptr) DDP_H5_CHECK(H5free_memory(ptr), ctx);
    return out;
  }
  // Attribute values live in the object header (at most 64 KiB per message); a larger size is
  // a damaged datatype, and would be an allocation of up to 4 GiB.
  constexpr size_t kMaxStringAttr = size_t{64} << 10;
  const size_t size = DDP_H5_CHECK(H5Tget_size(stored.get()), ctx);
  if (size > kMaxStringAttr) {
    throw Error(ctx.kind, fmt::format("'{}': attribute '{}' of {} claims a {}-byte string",
                                      ctx.file, name, where, size));
  }
  std::string out(size, '\0');
  DDP_H5_CHECK(H5Aread(attr.get(), stored.get(), out.data()), ctx);
  out.resize(out.find_last_not_of('\0') + 1);  // npos + 1 == 0 for all-NUL
  return out;
}

std::vector<std::string> attr_names(hid_t loc, const H5Context& ctx) {
  std::vector<std::string> names;
  hsize_t idx = 0;
  DDP_H5_CHECK(H5Aiterate2(loc, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr_name, &names),
               ctx);
  return names;
}

void write_string_dataset(hid_t loc, const std::string& name, const std::string& value,
                          const H5Context& ctx) {
  H5TypeHandle type(DDP_H5_CHECK(H5Tcopy(H5T_C_S1), ctx));
  DDP_H5_CHECK(H5Tset_size(type.get(), std::max<size_t>(1, value.size())), ctx);
  DDP_H5_CHECK(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), ctx);
  DDP_H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8), ctx);
  H5SpaceHandle space(DDP_H5_CHECK(H5Screate(H5S_SCALAR), ctx));
  H5DatasetHandle dset(DDP_H5_CHECK(H5Dcreate2(loc, name.c_str(), type.get(), space.get(),
                                               H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), ctx));
  std::string padded = value;
  if (padded.empty()) padded.push_back('\0');
  DDP_H5_CHECK(H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()),
               ctx);
  write_string_attr(dset.get(), "dtype", kStringDtypeName, ctx);
  write_uint64_attr(dset.get(), "xxh3", checksum_bytes(value.data(), value.size()), ctx);
  dset.close("H5Dclose", ctx);
}

std::string read_string_dataset(hid_t loc, const std::string& name, bool verify,
                                const H5Context& ctx) {
  H5DatasetHandle dset(DDP_H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), ctx));
  H5TypeHandle stored(DDP_H5_CHECK(H5Dget_type(dset.get()), ctx));
  if (DDP_H5_CHECK(H5Tget_class(stored.get()), ctx) != H5T_STRING ||
      DDP_H5_CHECK(H5Tis_variable_str(stored.get()), ctx) > 0) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("'{}': dataset '{}' is not a fixed-length string", ctx.file, name));
  }
  // One string, whose bytes are in the file: H5Dread writes every point of the dataspace, and
  // the datatype's size is only a claim until it is backed by storage.
  H5SpaceHandle space(DDP_H5_CHECK(H5Dget_space(dset.get()), ctx));
  const size_t size = DDP_H5_CHECK(H5Tget_size(stored.get()), ctx);
  if (DDP_H5_CHECK(H5Sget_simple_extent_npoints(space.get()), ctx) != 1 ||
      H5Dget_storage_size(dset.get()) != size) {
    throw Error(ErrorKind::kCorruption,
                fmt::format("'{}': dataset '{}' is not one {}-byte string stored in the file "
                            "({} elements, {} bytes stored)", ctx.file, name, size,
                            H5Sget_simple_extent_npoints(space.get()),
                            H5Dget_storage_size(dset.get())));
  }
  std::string out(size, '\0');
  DDP_H5_CHECK(H5Dread(dset.get(), stored.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), ctx);
  out.resize(out.find_last_not_of('\0') + 1);
  if (verify) {
    const uint64_t recorded = read_uint64_attr(dset.get(), "xxh3", "dataset '" + name + "'", ctx);
    const uint64_t actual = checksum_bytes(out.data(), out.size());
    if (recorded != actual) {
      throw Error(ErrorKind::kCorruption,
                  fmt::format("'{}': dataset '/{}' is corrupt: checksum mismatch: recorded {}, "
                              "data has {}", ctx.file, name, hex64(recorded), hex64(actual)));
    }
  }
  return out;
}

H5PlistHandle checkpoint_file_access(const H5Context& ctx) {
  H5PlistHandle fapl(DDP_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), ctx));
  DDP_H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), ctx);
#if H5_VERSION_GE(1, 10, 7)
  DDP_H5_CHECK(H5Pset_file_locking(fapl.get(), /*use_file_locking=*/0,
                                   /*ignore_when_disabled=*/1), ctx);
#endif
  return fapl;
}

std::string h5_library_version() {
  unsigned major = 0, minor = 0, release = 0;
  DDP_H5_CHECK(H5get_libversion(&major, &minor, &release),
               (H5Context{"(HDF5 library)", ErrorKind::kInternal}));
  return fmt::format("{}.{}.{}", major, minor, release);
}

}  // namespace ddp::ckpt
