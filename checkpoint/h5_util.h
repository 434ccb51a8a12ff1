// Typed helpers over DDP_H5_CHECK shared by the writer and the reader: attributes, string
// datasets, and the mapping of ddp dtypes onto HDF5 types. Layout decisions live in
// docs/checkpoint-format.md; this file only encodes them.
//
// Thread-safety: as h5_check.h.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/h5_check.h"
#include "collectives/dtype.h"

namespace ddp::ckpt {

// The "dtype" attribute of a tensor dataset is dtype_name(); the string datasets under /meta
// carry this value instead.
constexpr const char* kStringDtypeName = "string";

// HDF5 types for a ddp dtype: little-endian in the file, native in memory (identical on every
// supported host, so no conversion runs). float16 and bfloat16 are stored as uint16 bit
// patterns; the "dtype" attribute tells them apart.
struct H5Types {
  hid_t file;
  hid_t memory;
};
H5Types h5_types_for(DType dtype);
// The dtype named by a "dtype" attribute; throws kCorruption (naming `where`) if unknown.
DType dtype_from_name(const std::string& name, const std::string& where);

bool has_attr(hid_t loc, const char* name, const H5Context& ctx);
void write_int64_attr(hid_t loc, const char* name, int64_t value, const H5Context& ctx);
void write_uint64_attr(hid_t loc, const char* name, uint64_t value, const H5Context& ctx);
void write_double_attr(hid_t loc, const char* name, double value, const H5Context& ctx);
// Variable-length UTF-8 string (h5py reads it as str).
void write_string_attr(hid_t loc, const char* name, const std::string& value,
                       const H5Context& ctx);

// Readers convert from whatever numeric type is stored. A missing attribute throws ctx.kind
// naming `where` and the attribute.
int64_t read_int64_attr(hid_t loc, const char* name, const std::string& where,
                        const H5Context& ctx);
uint64_t read_uint64_attr(hid_t loc, const char* name, const std::string& where,
                          const H5Context& ctx);
double read_double_attr(hid_t loc, const char* name, const std::string& where,
                        const H5Context& ctx);
// Fixed-length or variable-length string attribute.
std::string read_string_attr(hid_t loc, const char* name, const std::string& where,
                             const H5Context& ctx);
std::vector<std::string> attr_names(hid_t loc, const H5Context& ctx);

// A scalar fixed-length string dataset (NUL-padded, at least 1 byte) with attributes
// dtype="string" and xxh3 (of the string's bytes). h5py: f["meta/config_yaml"][()].decode().
void write_string_dataset(hid_t loc, const std::string& name, const std::string& value,
                          const H5Context& ctx);
// Reads it back; with verify, a checksum mismatch throws kCorruption naming the dataset.
std::string read_string_dataset(hid_t loc, const std::string& name, bool verify,
                                const H5Context& ctx);

// File access properties for every checkpoint file: H5Fclose really closes (STRONG: reports
// and releases even if a handle leaked), and no HDF5 file locking -- the commit protocol
// already keeps readers off files being written, and flock fails on some network file systems
// where checkpoint directories live.
H5PlistHandle checkpoint_file_access(const H5Context& ctx);

// "1.10.8": the HDF5 library this process runs with.
std::string h5_library_version();

}  // namespace ddp::ckpt
