#include "checkpoint/h5_check.h"

#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

namespace ddp::ckpt {

void h5_quiet_this_thread() {
  thread_local bool quiet = false;
  if (quiet) return;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  quiet = true;
}

namespace {

// H5Ewalk2 callback: appends "function: description (minor message)" for each stack entry.
herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* lines = static_cast<std::vector<std::string>*>(data);
  std::string line = fmt::format("{}: {}", err->func_name ? err->func_name : "?",
                                 err->desc ? err->desc : "");
  char minor[256] = {0};
  H5E_type_t type;
  if (H5Eget_msg(err->min_num, &type, minor, sizeof(minor)) > 0) {
    line += fmt::format(" ({})", minor);
  }
  lines->push_back(std::move(line));
  return 0;
}

}  // namespace

std::string h5_error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  if (lines.empty()) return "no HDF5 error message";
  return fmt::format("{}", fmt::join(lines, "; "));
}

namespace {

// The system error HDF5's file driver reports inside its stack ("errno = 28, error message =
// 'No space left on device'"), as "No space left on device (errno 28)"; empty when none.
std::string system_error_in(const std::string& stack) {
  const size_t e = stack.find("errno = ");
  const size_t m = stack.find("error message = '", e == std::string::npos ? 0 : e);
  if (e == std::string::npos || m == std::string::npos) return "";
  const size_t begin = m + 17;
  const size_t end = stack.find('\'', begin);
  if (end == std::string::npos) return "";
  const std::string number = stack.substr(e + 8, stack.find_first_not_of("0123456789", e + 8) - e - 8);
  return fmt::format("{} (errno {})", stack.substr(begin, end - begin), number);
}

}  // namespace

void h5_fail(const char* call, const H5Context& ctx) {
  const std::string stack = h5_error_stack();
  // "H5Dwrite(t.dset.get(), ...)" -> "H5Dwrite": the expression is for us, the name for users.
  const std::string expr(call);
  const std::string name = expr.substr(0, expr.find('('));
  // An operating-system error (full disk, read-only or vanished directory) is all a user
  // needs; HDF5's own stack stays for what only HDF5 knows (a malformed file).
  const std::string os = system_error_in(stack);
  throw Error(ctx.kind, os.empty() ? fmt::format("{} failed for '{}': {}", name, ctx.file, stack)
                                   : fmt::format("{} failed for '{}': {}", name, ctx.file, os));
}

bool h5_path_exists(hid_t loc, const std::string& path_in, const H5Context& ctx) {
  const std::string path = path_in.rfind('/', 0) == 0 ? path_in.substr(1) : path_in;
  if (path.empty()) return true;  // the group itself
  size_t pos = 0;
  while (true) {
    const size_t slash = path.find('/', pos);
    const std::string prefix = path.substr(0, slash);
    if (DDP_H5_CHECK(H5Lexists(loc, prefix.c_str(), H5P_DEFAULT), ctx) <= 0) return false;
    if (slash == std::string::npos) return true;
    pos = slash + 1;
  }
}

uint64_t dataset_file_offset(const std::string& file, const std::string& dataset_path) {
  h5_quiet_this_thread();
  const H5Context ctx{file, ErrorKind::kCorruption};
  H5FileHandle f(DDP_H5_CHECK(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), ctx));
  if (!h5_path_exists(f.get(), dataset_path, ctx)) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("no dataset '{}' in '{}'", dataset_path, file));
  }
  H5DatasetHandle d(DDP_H5_CHECK(H5Dopen2(f.get(), dataset_path.c_str(), H5P_DEFAULT), ctx));
  const haddr_t addr = H5Dget_offset(d.get());
  if (addr == HADDR_UNDEF) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("dataset '{}' in '{}' has no contiguous storage", dataset_path, file));
  }
  return static_cast<uint64_t>(addr);
}

}  // namespace ddp::ckpt
