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

void h5_fail(const char* call, const H5Context& ctx) {
  throw Error(ctx.kind, fmt::format("{} failed for '{}': {}", call, ctx.file, h5_error_stack()));
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
