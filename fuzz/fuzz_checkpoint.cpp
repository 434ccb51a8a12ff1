// libFuzzer target: the checkpoint loader over arbitrary file contents.
//
// Input: the bytes of a "<dir>/x.h5" (the corpus holds real checkpoints written by ddp-train).
// Each input is written to a private temporary directory and read back through:
//
//  A. The sidecar-verified path (what every committed checkpoint has): a sidecar x.h5.sum is
//     written whose recorded size or checksum does not match the bytes. read_checkpoint and
//     verify_file must report kCorruption ("size mismatch" / "checksum mismatch") BEFORE
//     HDF5 sees the file. Cheap, and independent of HDF5's robustness.
//  B. No sidecar (a file copied without its .sum, or a hand-made one): HDF5 parses the bytes.
//     verify_file() must return (never throw); read_checkpoint() with checksums on and off
//     and read_meta() may only throw ddp::Error; a file that verify_file() passes must load.
//
// Set DDP_FUZZ_CKPT_MODE=sidecar to run only A (e.g. while a crash inside libhdf5 itself,
// which our code cannot prevent, is open; see fuzz/README.md). Default: both.
//
// A violation (another exception type, verify_file throwing, a sidecar mismatch not reported)
// aborts, so libFuzzer saves the input; sanitizer reports and crashes are caught by libFuzzer.
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <optional>
#include <string>
#include <typeinfo>

#include "checkpoint/checkpoint_data.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/sidecar.h"
#include "collectives/error.h"

namespace {

namespace ck = ddp::ckpt;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_checkpoint: PROPERTY VIOLATED: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

struct Workspace {
  std::string dir;
  std::string file;     // dir/x.h5
  std::string sidecar;  // dir/x.h5.sum
  bool hdf5 = true;     // run part B

  Workspace() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ddp-fuzz-ckpt-XXXXXX";
    if (!mkdtemp(templ.data())) fail("mkdtemp failed: " + std::string(std::strerror(errno)));
    dir = templ;
    file = dir + "/x.h5";
    sidecar = ck::sidecar_path_for(file);
    const char* mode = std::getenv("DDP_FUZZ_CKPT_MODE");
    hdf5 = !(mode && std::string(mode) == "sidecar");
  }
  ~Workspace() {
    ::unlink(sidecar.c_str());
    ::unlink(file.c_str());
    ::rmdir(dir.c_str());
  }
};

Workspace& workspace() {
  static Workspace w;  // destroyed at exit: leaves nothing behind in $TMPDIR
  return w;
}

void write_bytes(const std::string& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) fail("cannot write " + path);
}

// Runs fn; returns the ddp::Error it threw (or nullopt); any other exception is a violation.
template <class Fn>
std::optional<ddp::Error> only_ddp_errors(const char* call, Fn&& fn) {
  try {
    fn();
    return std::nullopt;
  } catch (const ddp::Error& e) {
    return e;
  } catch (const std::exception& e) {
    fail(std::string(call) + " threw a non-ddp exception " + typeid(e).name() + ": " + e.what());
  } catch (...) {
    fail(std::string(call) + " threw an unknown exception type");
  }
}

void expect_corruption(const char* call, const std::optional<ddp::Error>& e, const char* needle) {
  if (!e) fail(std::string(call) + ": sidecar mismatch not reported");
  if (e->kind() != ddp::ErrorKind::kCorruption ||
      std::string(e->what()).find(needle) == std::string::npos) {
    fail(std::string(call) + ": expected kCorruption \"" + needle + "\", got " +
         ddp::error_kind_name(e->kind()) + ": " + e->what());
  }
}

// A: the sidecar records a different size, then the right size with a different checksum.
void sidecar_path(const uint8_t* data, size_t size) {
  const uint64_t actual = ck::checksum_bytes(data, size);
  for (int variant = 0; variant < 2; ++variant) {
    ck::Sidecar s;
    s.current.bytes = variant == 0 ? size + 1 : size;
    s.current.checksum = variant == 0 ? actual : ~actual;
    s.current.global_step = 1;
    write_bytes(workspace().sidecar, ck::sidecar_to_json(s).data(),
                ck::sidecar_to_json(s).size());
    const char* needle = variant == 0 ? "size mismatch" : "checksum mismatch";
    expect_corruption("read_checkpoint", only_ddp_errors("read_checkpoint", [&] {
                        ck::read_checkpoint(workspace().file);
                      }), needle);
    ck::VerifyResult r;
    if (auto e = only_ddp_errors("verify_file", [&] { r = ck::verify_file(workspace().file); })) {
      fail(std::string("verify_file threw (it must return the error): ") + e->what());
    }
    expect_corruption("verify_file", r.error, needle);
  }
  ::unlink(workspace().sidecar.c_str());
}

// B: no sidecar; HDF5 parses the bytes.
void unverified_path() {
  const std::string& path = workspace().file;
  ck::VerifyResult r;
  if (auto e = only_ddp_errors("verify_file", [&] { r = ck::verify_file(path); })) {
    fail(std::string("verify_file threw (it must return the error): ") + e->what());
  }
  // Without checksums the reader goes past a damaged dataset, deeper into the file.
  ck::ReadOptions unchecked;
  unchecked.verify_file_checksum = false;
  unchecked.verify_tensor_checksums = false;
  only_ddp_errors("read_checkpoint(unchecked)", [&] { ck::read_checkpoint(path, unchecked); });
  if (r.ok()) {
    // A file that verifies must also load with the default (checked) options.
    if (auto e = only_ddp_errors("read_checkpoint", [&] { ck::read_checkpoint(path); })) {
      fail(std::string("verify_file passed but read_checkpoint failed: ") + e->what());
    }
  }
  only_ddp_errors("read_meta", [&] { ck::read_meta(path); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Workspace& w = workspace();
  write_bytes(w.file, data, size);
  sidecar_path(data, size);
  if (w.hdf5) unverified_path();
  return 0;
}
