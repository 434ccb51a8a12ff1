// Structure-aware inputs for fuzz_checkpoint, made from one real checkpoint with the HDF5 API.
// Byte mutations rarely produce a well-formed HDF5 file with one field changed; these are such
// files, each changing one thing the reader trusts. Not part of the fuzz build: run by hand
// when the format changes, and save the outputs (fuzz/README.md, "Seeds"):
//
//   clang++ -std=c++17 -O1 -I/usr/include/hdf5/serial fuzz/tools/make_seeds.cpp \
//     -lhdf5_serial -o /tmp/make_seeds
//   /tmp/make_seeds fuzz/corpus/checkpoint/adamw_1rank.h5 <out dir>
//
// Outputs in <out dir>:
//   fixed_strings.h5          every variable-length string attribute rewritten as fixed-length
//                             (same text): a valid checkpoint that never touches HDF5's global
//                             heap, so fuzzing from it reaches our code instead of H5HG_read
//   attr_string_array.h5      root attribute 'ddp_runtime_version': 64 fixed-length strings
//                             instead of one
//   attr_vlen_string_array.h5 root attribute 'torch_version': 4 variable-length strings
//   meta_string_array.h5      dataset 'meta/config_yaml': 256 fixed-length strings
//   tensor_huge_dims.h5       the first model tensor claims [2^40] float32 (4 TiB) with no
//                             storage (chunked, never written)
#include <hdf5.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "make_seeds: %s failed\n", what.c_str());
  H5Eprint2(H5E_DEFAULT, stderr);
  std::exit(1);
}

template <typename T>
T check(T rc, const char* what) {
  if (rc < 0) die(what);
  return rc;
}
#define CHECK(expr) check((expr), #expr)

hid_t open_copy(const std::string& src, const std::string& dst) {
  std::filesystem::copy_file(src, dst, std::filesystem::copy_options::overwrite_existing);
  return CHECK(H5Fopen(dst.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
}

hid_t fixed_string_type(size_t size) {
  hid_t t = CHECK(H5Tcopy(H5T_C_S1));
  CHECK(H5Tset_size(t, size));
  CHECK(H5Tset_strpad(t, H5T_STR_NULLPAD));
  CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
  return t;
}

hid_t vlen_string_type() {
  hid_t t = CHECK(H5Tcopy(H5T_C_S1));
  CHECK(H5Tset_size(t, H5T_VARIABLE));
  CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
  return t;
}

void write_attr(hid_t loc, const char* name, hid_t type, hid_t space, const void* data) {
  if (CHECK(H5Aexists(loc, name)) > 0) CHECK(H5Adelete(loc, name));
  hid_t a = CHECK(H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
  CHECK(H5Awrite(a, type, data));
  CHECK(H5Aclose(a));
}

// ---- fixed_strings.h5

struct VlenAttr {
  std::string object;  // path from the root ("." for the root)
  std::string name;
};

herr_t collect_vlen_attr(hid_t loc, const char* name, const H5A_info_t*, void* data) {
  hid_t a = CHECK(H5Aopen(loc, name, H5P_DEFAULT));
  hid_t t = CHECK(H5Aget_type(a));
  if (H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0) {
    static_cast<std::vector<std::string>*>(data)->push_back(name);
  }
  CHECK(H5Tclose(t));
  CHECK(H5Aclose(a));
  return 0;
}

herr_t collect_object(hid_t, const char* name, const H5O_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

void make_fixed_strings(const std::string& src, const std::string& dst) {
  hid_t f = open_copy(src, dst);
  std::vector<std::string> objects;
  CHECK(H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, collect_object, &objects, H5O_INFO_BASIC));
  for (const std::string& object : objects) {
    hid_t o = CHECK(H5Oopen(f, object.c_str(), H5P_DEFAULT));
    std::vector<std::string> names;
    hsize_t idx = 0;
    CHECK(H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_vlen_attr, &names));
    for (const std::string& name : names) {
      hid_t a = CHECK(H5Aopen(o, name.c_str(), H5P_DEFAULT));
      hid_t vt = vlen_string_type();
      char* value = nullptr;
      CHECK(H5Aread(a, vt, &value));
      const std::string text = value ? value : "";
      CHECK(H5free_memory(value));
      CHECK(H5Tclose(vt));
      CHECK(H5Aclose(a));
      hid_t ft = fixed_string_type(text.empty() ? 1 : text.size());
      hid_t space = CHECK(H5Screate(H5S_SCALAR));
      std::string padded = text.empty() ? std::string(1, '\0') : text;
      write_attr(o, name.c_str(), ft, space, padded.data());
      CHECK(H5Sclose(space));
      CHECK(H5Tclose(ft));
    }
    CHECK(H5Oclose(o));
  }
  CHECK(H5Fclose(f));
}

// ---- malformed variants

void make_attr_string_array(const std::string& src, const std::string& dst) {
  hid_t f = open_copy(src, dst);
  const hsize_t n = 64;
  hid_t t = fixed_string_type(8);
  hid_t space = CHECK(H5Screate_simple(1, &n, nullptr));
  std::string data(n * 8, 'A');
  write_attr(f, "ddp_runtime_version", t, space, data.data());
  CHECK(H5Sclose(space));
  CHECK(H5Tclose(t));
  CHECK(H5Fclose(f));
}

void make_attr_vlen_string_array(const std::string& src, const std::string& dst) {
  hid_t f = open_copy(src, dst);
  const hsize_t n = 4;
  hid_t t = vlen_string_type();
  hid_t space = CHECK(H5Screate_simple(1, &n, nullptr));
  const char* data[n] = {"a", "b", "c", "d"};
  write_attr(f, "torch_version", t, space, data);
  CHECK(H5Sclose(space));
  CHECK(H5Tclose(t));
  CHECK(H5Fclose(f));
}

void make_meta_string_array(const std::string& src, const std::string& dst) {
  hid_t f = open_copy(src, dst);
  CHECK(H5Ldelete(f, "meta/config_yaml", H5P_DEFAULT));
  const hsize_t n = 256;
  hid_t t = fixed_string_type(16);
  hid_t space = CHECK(H5Screate_simple(1, &n, nullptr));
  hid_t d = CHECK(H5Dcreate2(f, "meta/config_yaml", t, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT));
  std::string data(n * 16, 'y');
  CHECK(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
  const uint64_t xxh3 = 0;
  hid_t scalar = CHECK(H5Screate(H5S_SCALAR));
  write_attr(d, "xxh3", H5T_NATIVE_UINT64, scalar, &xxh3);
  CHECK(H5Sclose(scalar));
  CHECK(H5Dclose(d));
  CHECK(H5Sclose(space));
  CHECK(H5Tclose(t));
  CHECK(H5Fclose(f));
}

void make_tensor_huge_dims(const std::string& src, const std::string& dst) {
  hid_t f = open_copy(src, dst);
  std::vector<std::string> objects;
  CHECK(H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, collect_object, &objects, H5O_INFO_BASIC));
  std::string victim;
  for (const std::string& o : objects) {
    H5O_info_t info;
    CHECK(H5Oget_info_by_name2(f, o.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT));
    if (info.type == H5O_TYPE_DATASET && o.rfind("model/", 0) == 0) {
      victim = o;
      break;
    }
  }
  if (victim.empty()) die("finding a model/ dataset");
  int64_t index = 0;
  {
    hid_t d = CHECK(H5Dopen2(f, victim.c_str(), H5P_DEFAULT));
    hid_t a = CHECK(H5Aopen(d, "index", H5P_DEFAULT));
    CHECK(H5Aread(a, H5T_NATIVE_INT64, &index));
    CHECK(H5Aclose(a));
    CHECK(H5Dclose(d));
  }
  CHECK(H5Ldelete(f, victim.c_str(), H5P_DEFAULT));
  const hsize_t dims = hsize_t{1} << 40, chunk = 1024;
  hid_t space = CHECK(H5Screate_simple(1, &dims, nullptr));
  hid_t dcpl = CHECK(H5Pcreate(H5P_DATASET_CREATE));
  CHECK(H5Pset_chunk(dcpl, 1, &chunk));
  hid_t d = CHECK(H5Dcreate2(f, victim.c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl,
                             H5P_DEFAULT));
  hid_t scalar = CHECK(H5Screate(H5S_SCALAR));
  hid_t vt = vlen_string_type();
  const char* dtype = "float32";
  write_attr(d, "dtype", vt, scalar, &dtype);
  const uint64_t xxh3 = 0;
  write_attr(d, "xxh3", H5T_NATIVE_UINT64, scalar, &xxh3);
  write_attr(d, "index", H5T_NATIVE_INT64, scalar, &index);
  CHECK(H5Tclose(vt));
  CHECK(H5Sclose(scalar));
  CHECK(H5Dclose(d));
  CHECK(H5Pclose(dcpl));
  CHECK(H5Sclose(space));
  CHECK(H5Fclose(f));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_seeds <checkpoint.h5> <out dir>\n");
    return 2;
  }
  const std::string src = argv[1], out = argv[2];
  std::filesystem::create_directories(out);
  make_fixed_strings(src, out + "/fixed_strings.h5");
  make_attr_string_array(src, out + "/attr_string_array.h5");
  make_attr_vlen_string_array(src, out + "/attr_vlen_string_array.h5");
  make_meta_string_array(src, out + "/meta_string_array.h5");
  make_tensor_huge_dims(src, out + "/tensor_huge_dims.h5");
  std::printf("make_seeds: wrote 5 files into %s\n", out.c_str());
  return 0;
}
