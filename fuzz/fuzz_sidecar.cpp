// libFuzzer target: the small JSON files next to checkpoints, read before any HDF5 file is
// opened: the sidecar "<checkpoint>.h5.sum" (checkpoint/sidecar.h) and "latest.json"
// (read_latest, list_checkpoints in checkpoint/commit.h).
//
// Input: the text of the file. It is written both as dir/x.h5.sum (next to a 10-byte dir/x.h5)
// and as dir/latest.json, then read through:
//   sidecar_from_json, read_sidecar, verify_against_sidecar: only ddp::Error (kCorruption for
//     content, kNewerVersion for a checksum algorithm this build does not know); an accepted sidecar survives sidecar_to_json -> sidecar_from_json unchanged;
//   read_latest: never throws for content (nullopt + warning); an accepted pointer names a
//     plain, existing file name in the directory (no '/', no NUL);
//   list_checkpoints: never throws for content (an unreadable sidecar is sidecar_error).
// A violation aborts, so libFuzzer saves the input.
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

#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/sidecar.h"
#include "collectives/error.h"

namespace {

namespace ck = ddp::ckpt;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_sidecar: PROPERTY VIOLATED: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fail("cannot write " + path);
}

struct Workspace {
  std::string dir, file, sidecar, latest;
  Workspace() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ddp-fuzz-sidecar-XXXXXX";
    if (!mkdtemp(templ.data())) fail("mkdtemp failed: " + std::string(std::strerror(errno)));
    dir = templ;
    file = dir + "/x.h5";
    sidecar = ck::sidecar_path_for(file);
    latest = dir + "/" + ck::kLatestFileName;
    write_bytes(file, "0123456789");
  }
  ~Workspace() {
    for (const std::string* p : {&latest, &sidecar, &file}) ::unlink(p->c_str());
    ::rmdir(dir.c_str());
  }
};

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

// Content is corrupt, or names an algorithm of a newer ddp-runtime; nothing else.
void expect_kind(const char* call, const std::optional<ddp::Error>& e, ddp::ErrorKind kind) {
  if (e && e->kind() != kind && e->kind() != ddp::ErrorKind::kNewerVersion) {
    fail(std::string(call) + ": expected " + ddp::error_kind_name(kind) + ", got " +
         ddp::error_kind_name(e->kind()) + ": " + e->what());
  }
}

// Control bytes as \xNN, so that a NUL in a name is visible in the report.
std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

bool same(const ck::FileDigest& a, const ck::FileDigest& b) {
  return a.bytes == b.bytes && a.checksum == b.checksum && a.global_step == b.global_step;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Workspace w;
  ck::FileSystem& fs = ck::default_file_system();
  const std::string text(reinterpret_cast<const char*>(data), size);

  // The sidecar parser, and its round trip.
  ck::Sidecar parsed;
  const auto parse_error = only_ddp_errors("sidecar_from_json", [&] {
    parsed = ck::sidecar_from_json(text, "fuzz");
  });
  expect_kind("sidecar_from_json", parse_error, ddp::ErrorKind::kCorruption);
  if (!parse_error) {
    ck::Sidecar back;
    const auto e = only_ddp_errors("sidecar_from_json(sidecar_to_json)", [&] {
      back = ck::sidecar_from_json(ck::sidecar_to_json(parsed), "round trip");
    });
    if (e) fail(std::string("an accepted sidecar does not read back: ") + e->what());
    if (!same(back.current, parsed.current) || back.replaces.has_value() != parsed.replaces.has_value() ||
        (back.replaces && !same(*back.replaces, *parsed.replaces))) {
      fail("sidecar round trip changed the values");
    }
  }

  // The same text as a file beside a checkpoint.
  write_bytes(w.sidecar, text);
  expect_kind("read_sidecar", only_ddp_errors("read_sidecar", [&] { ck::read_sidecar(fs, w.file); }),
              ddp::ErrorKind::kCorruption);
  expect_kind("verify_against_sidecar",
              only_ddp_errors("verify_against_sidecar",
                              [&] { ck::verify_against_sidecar(fs, w.file); }),
              ddp::ErrorKind::kCorruption);
  if (auto e = only_ddp_errors("list_checkpoints", [&] { ck::list_checkpoints(fs, w.dir); })) {
    fail(std::string("list_checkpoints threw for a sidecar's content: ") + e->what());
  }

  // As latest.json.
  write_bytes(w.latest, text);
  std::optional<ck::LatestPointer> pointer;
  std::string warning;
  if (auto e = only_ddp_errors("read_latest", [&] { pointer = ck::read_latest(fs, w.dir, &warning); })) {
    fail(std::string("read_latest threw for content: ") + e->what());
  }
  if (pointer) {
    // A NUL inside the name would make the C path (open, stat) name a different file than the
    // one recorded and logged.
    if (pointer->file.empty() || pointer->file.find('/') != std::string::npos ||
        pointer->file.find('\0') != std::string::npos ||
        pointer->path != ck::join_path(w.dir, pointer->file) || !fs.exists(pointer->path)) {
      fail("read_latest accepted 'file' \"" + escaped(pointer->file) +
           "\": not a plain, existing file name in the directory");
    }
  } else if (warning.empty()) {
    fail("read_latest returned nothing without a warning although latest.json exists");
  }
  ::unlink(w.latest.c_str());
  return 0;
}
