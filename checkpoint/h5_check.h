// The one checked wrapper for HDF5 calls, and RAII handles for HDF5 identifiers.
//
// Every HDF5 call in checkpoint/ goes through DDP_H5_CHECK(expr, ctx): a negative result
// (herr_t, hid_t, htri_t, haddr_t-as-signed) throws ddp::Error naming the call, the file and
// HDF5's own error stack. The kind comes from the context: a writer uses kIOError (the OS or
// the library refused to create/write/flush/close), a reader uses kCorruption (the file exists
// but its content cannot be read back).
//
// HDF5's automatic printing of error stacks to stderr is switched off per thread by
// h5_quiet_this_thread() (the library is built thread-safe; its error state is per thread).
// Every entry point of the writer and reader calls it.
//
// Thread-safety: the thread-safe HDF5 build serialises calls internally; handles must not be
// shared between threads without external locking.
#pragma once

#include <hdf5.h>

#include <string>
#include <utility>

#include "collectives/error.h"

namespace ddp::ckpt {

// Which file a call was about and what a failure means there.
struct H5Context {
  std::string file;
  ErrorKind kind = ErrorKind::kIOError;
};

// Turns off HDF5's automatic stderr error printing for the calling thread (idempotent).
void h5_quiet_this_thread();

// HDF5's current error stack as one line ("H5Fopen: unable to open file; ..."), then clears it.
std::string h5_error_stack();

// Throws ddp::Error(ctx.kind, "<call> failed for '<file>': <HDF5 messages>").
[[noreturn]] void h5_fail(const char* call, const H5Context& ctx);

// Returns rc unchanged when rc >= 0; throws otherwise.
template <typename T>
T h5_check(T rc, const char* call, const H5Context& ctx) {
  if (rc < 0) h5_fail(call, ctx);
  return rc;
}

// An owned HDF5 identifier of one class; closes it on destruction (errors ignored there) or
// with close() (errors thrown). Move-only.
template <herr_t (*CloseFn)(hid_t)>
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(hid_t id) : id_(id) {}
  H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  H5Handle& operator=(H5Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  ~H5Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now; a failure throws with ctx (used where a failed close means lost data).
  void close(const char* call, const H5Context& ctx) {
    hid_t id = std::exchange(id_, H5I_INVALID_HID);
    if (id >= 0) h5_check(CloseFn(id), call, ctx);
  }

 private:
  void reset() {
    if (id_ >= 0) CloseFn(id_);
    id_ = H5I_INVALID_HID;
  }
  hid_t id_ = H5I_INVALID_HID;
};

using H5FileHandle = H5Handle<H5Fclose>;
using H5GroupHandle = H5Handle<H5Gclose>;
using H5DatasetHandle = H5Handle<H5Dclose>;
using H5SpaceHandle = H5Handle<H5Sclose>;
using H5AttrHandle = H5Handle<H5Aclose>;
using H5PlistHandle = H5Handle<H5Pclose>;
using H5TypeHandle = H5Handle<H5Tclose>;

// Whether every component of `path` ("model/layers.0.weight") exists under `loc`. HDF5 1.10's
// H5Lexists fails, instead of answering false, when an intermediate group is missing.
bool h5_path_exists(hid_t loc, const std::string& path, const H5Context& ctx);

// Byte offset of a contiguous dataset's data in the file (tests flip bytes there). Throws
// kNotFound when the dataset does not exist, kInvalidArgument when it has no storage yet.
uint64_t dataset_file_offset(const std::string& file, const std::string& dataset_path);

}  // namespace ddp::ckpt

// `ctx` is an H5Context; evaluates `expr` once.
#define DDP_H5_CHECK(expr, ctx) ::ddp::ckpt::h5_check((expr), #expr, (ctx))
