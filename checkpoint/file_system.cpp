#include "checkpoint/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "checkpoint/xxh3.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp::ckpt {

std::string errno_name(int err) {
  switch (err) {
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case EIO: return "EIO";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR";
    case EXDEV: return "EXDEV";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EFBIG: return "EFBIG";
  }
  return fmt::format("errno {}", err);
}

void throw_errno(const std::string& op, const std::string& path, int err) {
  throw Error(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIOError,
              fmt::format("{} '{}': {} ({})", op, path, std::strerror(err), errno_name(err)));
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir == ".") return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

FileSystem& default_file_system() {
  static PosixFileSystem fs;
  return fs;
}

namespace {

// Owns a file descriptor; close errors are reported by close_checked().
class Fd {
 public:
  Fd(const std::string& path, int flags, const char* op, mode_t mode = 0644) : path_(path) {
    do {
      fd_ = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) throw_errno(op, path, errno);
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void fsync_checked() {
    if (::fsync(fd_) != 0) throw_errno("fsync", path_, errno);
  }
  void close_checked() {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_errno("close", path_, errno);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

void write_all(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", path, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

void PosixFileSystem::write_file(const std::string& path, const std::string& data) {
  Fd fd(path, O_WRONLY | O_CREAT | O_TRUNC, "create");
  write_all(fd.get(), data.data(), data.size(), path);
  fd.fsync_checked();
  fd.close_checked();
}

void PosixFileSystem::fsync_file(const std::string& path) {
  Fd fd(path, O_RDONLY, "open for fsync");
  fd.fsync_checked();
  fd.close_checked();
}

void PosixFileSystem::fsync_dir(const std::string& dir) {
  Fd fd(dir, O_RDONLY | O_DIRECTORY, "open directory");
  // Some file systems cannot fsync a directory (EINVAL); their renames are as durable as
  // they get, so that is not a failure.
  if (::fsync(fd.get()) != 0 && errno != EINVAL && errno != ENOTSUP) {
    throw_errno("fsync directory", dir, errno);
  }
}

void PosixFileSystem::rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw_errno("rename", fmt::format("{}' -> '{}", from, to), errno);
  }
}

void PosixFileSystem::link(const std::string& existing, const std::string& new_path) {
  if (::link(existing.c_str(), new_path.c_str()) != 0) {
    throw_errno("link", fmt::format("{}' -> '{}", existing, new_path), errno);
  }
}

void PosixFileSystem::remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw_errno("remove", path, errno);
}

bool PosixFileSystem::exists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  throw_errno("stat", path, errno);
}

uint64_t PosixFileSystem::file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw_errno("stat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

std::vector<std::string> PosixFileSystem::list_dir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) throw_errno("list directory", dir, errno);
  std::vector<std::string> names;
  errno = 0;
  while (const dirent* e = ::readdir(d.get())) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  if (errno != 0) throw_errno("read directory", dir, errno);
  std::sort(names.begin(), names.end());
  return names;
}

std::string PosixFileSystem::read_file(const std::string& path) {
  Fd fd(path, O_RDONLY, "open");
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

FileHash PosixFileSystem::hash_file(const std::string& path, FileChecksumAlgorithm algorithm,
                                    const BlockDigests* known) {
  Fd fd(path, O_RDONLY, "open");
  return hash_open_file(fd.get(), path, algorithm, known);
}

// ---------------------------------------------------------------------------------------------

const char* fs_op_name(FsOp op) {
  switch (op) {
    case FsOp::kWriteFile: return "write_file";
    case FsOp::kFsyncFile: return "fsync_file";
    case FsOp::kFsyncDir: return "fsync_dir";
    case FsOp::kRename: return "rename";
    case FsOp::kRemove: return "remove";
    case FsOp::kLink: return "link";
    case FsOp::kExists: return "exists";
    case FsOp::kFileSize: return "file_size";
    case FsOp::kListDir: return "list_dir";
    case FsOp::kReadFile: return "read_file";
    case FsOp::kHashFile: return "hash_file";
  }
  return "?";
}

bool fs_op_mutates(FsOp op) {
  return op == FsOp::kWriteFile || op == FsOp::kFsyncFile || op == FsOp::kFsyncDir ||
         op == FsOp::kRename || op == FsOp::kRemove || op == FsOp::kLink;
}

int FaultInjectingFileSystem::mutations() {
  std::lock_guard<std::mutex> lock(mu_);
  return mutations_;
}

bool FaultInjectingFileSystem::crashed() {
  std::lock_guard<std::mutex> lock(mu_);
  return crashed_;
}

std::vector<std::string> FaultInjectingFileSystem::trace() {
  std::lock_guard<std::mutex> lock(mu_);
  return trace_;
}

void FaultInjectingFileSystem::fail_call(FsOp op, int nth, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back({false, op, calls_[static_cast<int>(op)] + nth, false, err, false});
}

void FaultInjectingFileSystem::crash_before(FsOp op, int nth, bool partial_write) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back({false, op, calls_[static_cast<int>(op)] + nth, true, 0, partial_write});
}

void FaultInjectingFileSystem::crash_before_mutation(int nth, bool partial_write) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back({true, FsOp::kWriteFile, mutations_ + nth, true, 0, partial_write});
}

void FaultInjectingFileSystem::fail_mutation(int nth, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back({true, FsOp::kWriteFile, mutations_ + nth, false, err, false});
}

void FaultInjectingFileSystem::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.clear();
  crashed_ = false;
}

// REQUIRES: mu_ is held.
void FaultInjectingFileSystem::crash_now(const std::string& what) {
  crashed_ = true;
  throw SimulatedCrash("simulated crash before " + what);
}

bool FaultInjectingFileSystem::before(FsOp op, const std::string& what, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  if (crashed_) throw SimulatedCrash("process already crashed; " + what + " not run");
  const int n = ++calls_[static_cast<int>(op)];
  const bool mutates = fs_op_mutates(op);
  const int m = mutates ? mutations_ + 1 : -1;
  for (const Fault& f : faults_) {
    const bool hit = f.any_mutation ? (mutates && m == f.at) : (f.op == op && n == f.at);
    if (!hit) continue;
    if (!f.crash) throw_errno(fmt::format("{} (injected)", fs_op_name(op)), path, f.err);
    if (f.partial_write && op == FsOp::kWriteFile) return true;
    crash_now(what);
  }
  if (mutates) ++mutations_;
  trace_.push_back(what);
  return false;
}

void FaultInjectingFileSystem::write_file(const std::string& path, const std::string& data) {
  const std::string what = fmt::format("write_file {} ({} bytes)", path, data.size());
  if (before(FsOp::kWriteFile, what, path)) {
    // A kill in the middle of write(): half the bytes reach the file, no fsync.
    Fd fd(path, O_WRONLY | O_CREAT | O_TRUNC, "create");
    write_all(fd.get(), data.data(), data.size() / 2, path);
    std::lock_guard<std::mutex> lock(mu_);
    crash_now(what + " (after a partial write)");
  }
  base_.write_file(path, data);
}

void FaultInjectingFileSystem::fsync_file(const std::string& path) {
  before(FsOp::kFsyncFile, "fsync_file " + path, path);
  base_.fsync_file(path);
}

void FaultInjectingFileSystem::fsync_dir(const std::string& dir) {
  before(FsOp::kFsyncDir, "fsync_dir " + dir, dir);
  base_.fsync_dir(dir);
}

void FaultInjectingFileSystem::rename(const std::string& from, const std::string& to) {
  before(FsOp::kRename, fmt::format("rename {} -> {}", from, to), from);
  base_.rename(from, to);
}

void FaultInjectingFileSystem::link(const std::string& existing, const std::string& new_path) {
  before(FsOp::kLink, fmt::format("link {} -> {}", existing, new_path), new_path);
  base_.link(existing, new_path);
}

void FaultInjectingFileSystem::remove(const std::string& path) {
  before(FsOp::kRemove, "remove " + path, path);
  base_.remove(path);
}

bool FaultInjectingFileSystem::exists(const std::string& path) {
  before(FsOp::kExists, "exists " + path, path);
  return base_.exists(path);
}

uint64_t FaultInjectingFileSystem::file_size(const std::string& path) {
  before(FsOp::kFileSize, "file_size " + path, path);
  return base_.file_size(path);
}

std::vector<std::string> FaultInjectingFileSystem::list_dir(const std::string& dir) {
  before(FsOp::kListDir, "list_dir " + dir, dir);
  return base_.list_dir(dir);
}

std::string FaultInjectingFileSystem::read_file(const std::string& path) {
  before(FsOp::kReadFile, "read_file " + path, path);
  return base_.read_file(path);
}

FileHash FaultInjectingFileSystem::hash_file(const std::string& path,
                                            FileChecksumAlgorithm algorithm,
                                            const BlockDigests* known) {
  before(FsOp::kHashFile, "hash_file " + path, path);
  return base_.hash_file(path, algorithm, known);
}

}  // namespace ddp::ckpt
