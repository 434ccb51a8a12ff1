// bench_checkpoint: what a checkpoint save and a resume cost, each as a ratio against a peer
// measured in the same run, in alternating rounds (the order rotates every round); figures are
// medians over rounds.
//
//   mpirun -np 2 bench_checkpoint --dir D [--rounds N] [--warmup W] [--hidden 2048,...]
//       [--features F]
//       [--chunk-mb M] [--python /usr/bin/python3 --peer bench/torch_save_peer.py]
//       [--only all|save|stall] [--drop-caches 1|0] [--phases 1|0]
//
// The state: the built-in MLP (features -> hidden... -> 10) with AdamW after one real training
// step, inside a ddp::Trainer (so exp_avg / exp_avg_sq / step exist), about 3x the parameter
// bytes. Default: 512 -> 5 x 2048 -> 10, 17.9 M parameters, 71 MB of weights, 214 MB in all.
//
// Variants (all files in --dir, one file system):
//   save rounds   ours          the real save path: model_sources + optimizer_sources,
//                               ckpt::snapshot_for_save, PendingSave::finish over an
//                               MpiCommunicator (gather to rank 0, HDF5 write, fsync, sidecar,
//                               rename, latest.json); time until every rank returned
//                 raw           rank 0: open, write the same number of bytes in 4 MiB writes
//                               from memory, fsync, close
//                 torch_fsync   torch.save of a dict of same-shaped tensors (Python peer,
//                               bench/torch_save_peer.py), then flush + os.fsync
//                 torch_nofsync the same without fsync (data left in the page cache)
//   resume rounds resume        as Checkpointer::resume: rank 0 ckpt::read_checkpoint (whole-
//                               file checksum, then each tensor's), ckpt::broadcast_checkpoint
//                               to the others, every rank load_model_state +
//                               load_optimizer_state; time until every rank is done
//                 raw_read      rank 0: sequential read of the same file in 4 MiB reads
//                 raw_read_bcast rank 0 reads the file into memory (4 MiB reads), then one
//                               MPI broadcast of its bytes to every rank (the floor for a
//                               resume that reads once and hands the bytes over)
//                 (page cache dropped before each, where /proc/sys/vm/drop_caches is writable)
//   stall rounds  each a save, then the next training step (forward/backward on a fixed batch,
//                 Checkpointer::before_update, optimizer.step), timed too
//                 sync          a Trainer with checkpoint.async=false: Checkpointer::save_now,
//                               last_stall_s() (the whole save)
//                 async         a Trainer with checkpoint.async=true: last_stall_s() (snapshot
//                               plus the wait in before_update: all the training thread spent
//                               blocked); the background part is waited for outside the figure
//                 none          no save: the next step's time without one, for the slowdown
// Save rounds start with --warmup untimed rounds (default 2; nccl-tests' warm-up iterations):
// here the first saves after start-up are slow for every variant -- 0.4-0.7 s for ours and
// 0.25 s for the raw write, against 0.11 and 0.14 s later -- and they are printed, not counted.
// Before every timed variant: leftovers removed, sync(), barrier. Rank 0's memory during each
// `ours` save: VmHWM after resetting it (/proc/self/clear_refs = 5; a 1 ms RSS sampler where that
// is refused, and on the untimed first save as a cross-check),
// minus VmRSS just before.
// --phases 1 adds a breakdown of the save on rank 0 (3 repetitions, not alternated): snapshot
// copy + hash, gather, HDF5 write + close, fsync, whole-file hash, the rest of the commit.
//
// --dir is scratch space: emptied at the start, removed at the end.
// Rank 0 prints one JSON object on stdout; progress goes to stderr.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include <H5public.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_broadcast.h"
#include "checkpoint/commit.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format_reader.h"
#include "checkpoint/format_writer.h"
#include "checkpoint/sharded_save.h"
#include "collectives/error.h"
#include "collectives/mpi_communicator.h"
#include "runtime/checkpointer.h"
#include "runtime/config.h"
#include "runtime/ddp_engine.h"
#include "runtime/state_io.h"
#include "runtime/trainer.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr size_t kIoBlock = 4u << 20;  // raw peers: 4 MiB writes / reads

struct Options {
  std::string dir;
  int rounds = 7;
  int warmup = 2;  // untimed save rounds first (ours and every peer, alternating as timed ones)
  std::vector<int64_t> hidden{2048, 2048, 2048, 2048, 2048};
  int64_t features = 512;
  double chunk_mb = 16.0;  // checkpoint.chunk_mb (gather round size), as the default config
  std::string python;      // empty: no torch.save peer
  std::string peer;
  std::string only = "all";
  bool drop_caches = true;
  bool phases = true;
};

[[noreturn]] void usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s --dir D [--rounds N] [--warmup W] [--hidden A,B,..] [--features F] "
               "[--chunk-mb M] [--python PY --peer torch_save_peer.py] [--only all|save|stall] "
               "[--drop-caches 1|0] [--phases 1|0]\n",
               argv0, why.c_str(), argv0);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value for " + a);
    const std::string v = argv[++i];
    if (a == "--dir") {
      o.dir = v;
    } else if (a == "--rounds") {
      o.rounds = std::stoi(v);
    } else if (a == "--warmup") {
      o.warmup = std::stoi(v);
    } else if (a == "--hidden") {
      o.hidden.clear();
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) o.hidden.push_back(std::stoll(item));
    } else if (a == "--features") {
      o.features = std::stoll(v);
    } else if (a == "--chunk-mb") {
      o.chunk_mb = std::stod(v);
    } else if (a == "--python") {
      o.python = v;
    } else if (a == "--peer") {
      o.peer = v;
    } else if (a == "--only") {
      o.only = v;
    } else if (a == "--drop-caches") {
      o.drop_caches = v == "1";
    } else if (a == "--phases") {
      o.phases = v == "1";
    } else {
      usage(argv[0], "unknown option " + a);
    }
  }
  if (o.dir.empty()) usage(argv[0], "--dir is required");
  if (o.rounds < 1) usage(argv[0], "--rounds must be >= 1");
  if (o.warmup < 0) usage(argv[0], "--warmup must be >= 0");
  if (o.only != "all" && o.only != "save" && o.only != "stall") usage(argv[0], "bad --only");
  if (o.python.empty() != o.peer.empty()) usage(argv[0], "--python and --peer go together");
  return o;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double max_over_ranks(ddp::Communicator& comm, double v) {
  comm.all_reduce(&v, 1, ddp::DType::kFloat64, ddp::ReduceOp::kMax);
  return v;
}

[[noreturn]] void fail_errno(const std::string& op, const std::string& path) {
  throw ddp::Error(ddp::ErrorKind::kIOError,
                   fmt::format("{} '{}': {}", op, path, std::strerror(errno)));
}

// --- memory -------------------------------------------------------------------------------

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); 0 if absent.
uint64_t status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      return std::stoull(line.substr(field.size() + 1)) * 1024;
    }
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where not permitted.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// Bytes of anonymous memory this process touched for the first time (minor page faults, all
// threads): what a save allocates afresh. Page-cache pages written by write() are not counted.
uint64_t minor_fault_bytes() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<uint64_t>(r.ru_minflt) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// Memory bandwidth of first-touching fresh pages vs rewriting touched ones (GB/s): on a virtual
// machine whose host backs guest memory lazily, the first is many times slower, and every
// freshly allocated buffer of a save pays it.
std::pair<double, double> touch_bandwidth() {
  const size_t n = 128u << 20;
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return {0, 0};
  const auto t0 = std::chrono::steady_clock::now();
  std::memset(p, 1, n);
  const auto t1 = std::chrono::steady_clock::now();
  std::memset(p, 2, n);
  const auto t2 = std::chrono::steady_clock::now();
  ::munmap(p, n);
  return {n / std::chrono::duration<double>(t1 - t0).count() / 1e9,
          n / std::chrono::duration<double>(t2 - t1).count() / 1e9};
}

// Samples the resident set every millisecond on a thread; peak() after stop().
class RssSampler {
 public:
  RssSampler() : thread_([this] { run(); }) {}
  ~RssSampler() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t peak() const { return peak_; }

 private:
  void run() {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    while (!stop_) {
      std::ifstream in("/proc/self/statm");
      uint64_t size = 0, resident = 0;
      in >> size >> resident;
      peak_ = std::max<uint64_t>(peak_, resident * page);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> peak_{0};
  std::thread thread_;
};

// --- raw I/O peers ------------------------------------------------------------------------

void raw_write(const std::string& path, const uint8_t* data, size_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno("open", path);
  for (size_t off = 0; off < bytes;) {
    const ssize_t n = ::write(fd, data + off, std::min(kIoBlock, bytes - off));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("write", path);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail_errno("fsync", path);
  if (::close(fd) != 0) fail_errno("close", path);
}

// Reads the whole file; into `keep` (resized to the file) when given, else into one block.
uint64_t raw_read(const std::string& path, std::vector<uint8_t>* keep = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno("open", path);
  std::vector<uint8_t> buf(kIoBlock);
  if (keep) keep->resize(fs::file_size(path));
  uint64_t total = 0;
  for (;;) {
    uint8_t* dst = keep ? keep->data() + total : buf.data();
    const size_t want = keep ? std::min<size_t>(kIoBlock, keep->size() - total) : buf.size();
    const ssize_t n = want == 0 ? 0 : ::read(fd, dst, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("read", path);
    }
    if (n == 0) break;
    total += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return total;
}

// sync() then drop the page cache; false where not permitted (reads then hit the cache).
bool drop_page_cache() {
  ::sync();
  std::ofstream out("/proc/sys/vm/drop_caches");
  out << "3";
  out.flush();
  return static_cast<bool>(out);
}

void remove_all_in(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) fs::remove_all(e.path(), ec);
}

// --- torch.save peer ----------------------------------------------------------------------

// The Python peer as a child process of rank 0, driven line by line over pipes.
class TorchPeer {
 public:
  TorchPeer(const std::string& python, const std::string& script, const std::string& spec) {
    int in_pipe[2], out_pipe[2];
    if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0) {
      fail_errno("pipe", python);
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
    std::vector<std::string> args{python, script, spec};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, python.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in_pipe[0]);
    ::close(out_pipe[1]);
    if (rc != 0) {
      errno = rc;
      fail_errno("posix_spawn", python);
    }
    to_ = ::fdopen(in_pipe[1], "w");
    from_ = ::fdopen(out_pipe[0], "r");
    const std::string ready = read_line();
    if (ready.rfind("ready ", 0) != 0) {
      throw ddp::Error(ddp::ErrorKind::kInternal,
                       fmt::format("torch.save peer did not start: '{}'", ready));
    }
    payload_bytes_ = std::stoull(ready.substr(6));
  }
  ~TorchPeer() {
    if (to_) {
      std::fputs("quit\n", to_);
      std::fclose(to_);
    }
    if (from_) std::fclose(from_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  uint64_t payload_bytes() const { return payload_bytes_; }

  double save(const std::string& path, bool with_fsync) {
    std::fprintf(to_, "save %s %d\n", path.c_str(), with_fsync ? 1 : 0);
    std::fflush(to_);
    const std::string line = read_line();
    try {
      return std::stod(line);
    } catch (const std::exception&) {
      throw ddp::Error(ddp::ErrorKind::kInternal, "torch.save peer: " + line);
    }
  }

 private:
  std::string read_line() {
    char buf[4096];
    if (!std::fgets(buf, sizeof(buf), from_)) return "<peer exited>";
    std::string s(buf);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
  uint64_t payload_bytes_ = 0;
};

// --- the state and the real save path -----------------------------------------------------

std::string list_text(const std::vector<int64_t>& v) {
  return fmt::format("[{}]", fmt::join(v, ", "));
}

ddp::Config trainer_config(const Options& o, const std::string& root, const std::string& name,
                           bool async) {
  return ddp::load_config_from_string(
      "{}", {"trainer.default_root_dir=" + root, "trainer.name=" + name,
             "trainer.max_steps=1", "trainer.max_epochs=-1", "trainer.batch_size=4",
             "trainer.progress_bar=off", "trainer.log_every_n_steps=1000",
             "trainer.check_val_every_n_epoch=0", "data.num_samples=64", "data.val_samples=16",
             "data.num_features=" + std::to_string(o.features), "data.num_classes=10",
             "model.name=mlp", "model.hidden_sizes=" + list_text(o.hidden),
             "optimizer.name=adamw", "optimizer.lr=0.001", "checkpoint.every_n_epochs=0",
             "checkpoint.save_last=false", "checkpoint.save_top_k=1",
             "checkpoint.keep_last_n=1", "checkpoint.dirpath=" + root + "/" + name + "/ckpt",
             std::string("checkpoint.async=") + (async ? "true" : "false"),
             fmt::format("checkpoint.chunk_mb={}", o.chunk_mb)});
}

std::vector<ddp::ckpt::TensorSource> state_sources(ddp::Trainer& t) {
  auto sources = ddp::model_sources(t.model());
  auto opt = ddp::optimizer_sources(t.optimizer(), t.model());
  sources.insert(sources.end(), opt.begin(), opt.end());
  return sources;
}

// What Checkpointer::start_save fills in (cheap parts included so the timing is honest).
ddp::ckpt::CheckpointMeta make_meta(ddp::Trainer& t, int world, int64_t step) {
  ddp::ckpt::CheckpointMeta m;
  const auto& cfg = t.config();
  m.global_step = step;
  m.epoch = t.state().epoch;
  m.batch_in_epoch = t.state().batch_in_epoch;
  m.world_size = world;
  m.batch_size = cfg.trainer.batch_size;
  m.ddp_runtime_version = "bench";
  m.torch_version = TORCH_VERSION;
  m.hdf5_version = fmt::format("{}.{}.{}", H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE);
  m.created_utc = "1970-01-01T00:00:00Z";
  m.config_yaml = cfg.resolved_yaml;
  m.hparams_json = t.hparams_json();
  m.fingerprint = ddp::architecture_fingerprint(t.model());
  m.optimizer_json = ddp::optimizer_json(t.optimizer(), cfg.optimizer.name, t.model());
  m.scheduler_json = "{}";
  m.callbacks_json = "{}";
  return m;
}

struct SaveSample {
  double total_s = 0;     // until every rank returned from finish()
  double snapshot_s = 0;  // phase 1, slowest rank
  double finish_s = 0;    // phases 2-4, slowest rank
  uint64_t file_bytes = 0;
  uint64_t rss_before = 0, hwm = 0, sampled_peak = 0;  // rank 0
  uint64_t fault_bytes = 0;  // rank 0: memory touched for the first time (minor faults)
};

SaveSample ours_save(ddp::MpiCommunicator& comm, ddp::Trainer& t, const std::string& path,
                     int64_t step, size_t chunk_bytes, bool measure_memory, bool with_sampler) {
  SaveSample s;
  std::unique_ptr<RssSampler> sampler;
  bool hwm_ok = false;
  const bool measure = measure_memory && comm.rank() == 0;
  if (measure) {
    s.rss_before = status_bytes("VmRSS");
    hwm_ok = reset_peak_rss();
    // The sampler thread costs a little CPU: only where VmHWM cannot be reset, or asked for.
    if (!hwm_ok || with_sampler) sampler = std::make_unique<RssSampler>();
  }
  comm.barrier();
  const uint64_t faults0 = minor_fault_bytes();
  const double t0 = now_s();
  ddp::ckpt::SaveRequest req;
  req.meta = make_meta(t, comm.size(), step);
  req.tensors = state_sources(t);
  req.rank_state.rank = comm.rank();
  req.rank_state.cpu_rng = ddp::cpu_rng_state();
  req.final_path = path;
  req.update_latest = true;
  req.chunk_bytes = chunk_bytes;
  // As Checkpointer does for a synchronous save: rank 0 writes from the tensors, and the
  // snapshot storage of the other ranks is kept between saves.
  static auto buffer = std::make_shared<ddp::ckpt::SnapshotBuffer>();
  req.zero_copy = true;
  req.buffer = buffer;
  if (t.topology().hosts.size() > 1) req.share_ranks = t.topology().ranks_with_host_of(0);
  auto pending = ddp::ckpt::snapshot_for_save(comm, std::move(req));
  const double t1 = now_s();
  const auto result = pending->finish(comm, ddp::ckpt::default_file_system());
  pending.reset();
  const double t2 = now_s();
  s.fault_bytes = minor_fault_bytes() - faults0;
  if (sampler) {
    sampler->stop();
    s.sampled_peak = sampler->peak();
  }
  if (measure) s.hwm = hwm_ok ? status_bytes("VmHWM") : 0;
  s.total_s = max_over_ranks(comm, t2 - t0);
  s.snapshot_s = max_over_ranks(comm, t1 - t0);
  s.finish_s = max_over_ranks(comm, t2 - t1);
  s.file_bytes = result.bytes;
  return s;
}

double resume_once(ddp::MpiCommunicator& comm, ddp::Trainer& t, const std::string& path,
                   uint64_t* fault_bytes) {
  comm.barrier();
  const uint64_t faults0 = minor_fault_bytes();
  const double t0 = now_s();
  ddp::ckpt::Checkpoint c;
  if (comm.rank() == 0) c = ddp::ckpt::read_checkpoint(path);  // as Checkpointer::resume
  if (comm.size() > 1) ddp::ckpt::broadcast_checkpoint(comm, 0, &c);
  ddp::load_model_state(t.model(), c, /*strict=*/true);
  ddp::load_optimizer_state(t.optimizer(), t.config().optimizer.name, t.model(), c);
  const double secs = now_s() - t0;
  *fault_bytes = minor_fault_bytes() - faults0;
  return max_over_ranks(comm, secs);
}

json stats(const std::vector<double>& v) {
  return json{{"median", median(v)},
              {"min", v.empty() ? 0.0 : *std::min_element(v.begin(), v.end())},
              {"max", v.empty() ? 0.0 : *std::max_element(v.begin(), v.end())},
              {"samples", v}};
}

void progress(bool root, const std::string& line) {
  if (root) std::fprintf(stderr, "bench_checkpoint: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  ddp::MpiRuntime mpi(&argc, &argv);
  const Options opt = parse(argc, argv);
  torch::set_num_threads(1);
  try {
    ddp::MpiCommunicator comm;
    const bool root = comm.rank() == 0;
    const int world = comm.size();
    const size_t chunk_bytes = static_cast<size_t>(opt.chunk_mb * 1024 * 1024);
    const std::string save_dir = opt.dir + "/save";
    const std::string resume_dir = opt.dir + "/resume";
    const std::string phase_dir = opt.dir + "/phases";
    if (root) {
      fs::remove_all(opt.dir);
      for (const auto& d : {save_dir, resume_dir, phase_dir}) fs::create_directories(d);
    }
    comm.barrier();

    // The state: a Trainer after one AdamW step. A second, async one for the stall rounds.
    progress(root, "building the trainers (one training step each)");
    ddp::Trainer trainer(trainer_config(opt, opt.dir, "sync", false), comm);
    trainer.fit();
    std::unique_ptr<ddp::Trainer> async_trainer;
    if (opt.only != "save") {
      async_trainer = std::make_unique<ddp::Trainer>(trainer_config(opt, opt.dir, "async", true),
                                                     comm);
      async_trainer->fit();
    }
    const auto sources = state_sources(trainer);
    uint64_t state_bytes = 0, param_bytes = 0;
    for (const auto& s : sources) {
      state_bytes += s.bytes;
      if (s.path.rfind("model/", 0) == 0) param_bytes += s.bytes;
    }
    const auto owner = ddp::ckpt::assign_shares(sources, world);
    std::vector<uint64_t> share(static_cast<size_t>(world), 0);
    for (size_t i = 0; i < sources.size(); ++i) share[static_cast<size_t>(owner[i])] += sources[i].bytes;
    progress(root, fmt::format("state: {} tensors, {:.1f} MB (parameters {:.1f} MB), "
                               "world size {}, rank 0 share {:.1f} MB",
                               sources.size(), state_bytes / 1e6, param_bytes / 1e6, world,
                               share[0] / 1e6));

    json out;
    out["world_size"] = world;
    out["hidden"] = opt.hidden;
    out["features"] = opt.features;
    out["tensors"] = sources.size();
    out["state_bytes"] = state_bytes;
    out["batch_size"] = trainer.config().trainer.batch_size;
    out["param_bytes"] = param_bytes;
    out["share_bytes"] = share;
    out["chunk_mb"] = opt.chunk_mb;
    out["rounds"] = opt.rounds;
    out["warmup"] = opt.warmup;
    out["dir"] = fs::absolute(opt.dir).string();
    if (root) {
      const auto [fresh, warm] = touch_bandwidth();
      out["touch_GBps"] = {{"first_touch", fresh}, {"rewrite", warm}};
    }

    if (opt.only == "all" || opt.only == "save") {
      // A first save (untimed): the file size for the raw peers, and the resume file.
      int64_t step = 1;
      const std::string resume_file = resume_dir + "/step=1.h5";
      // Its memory is measured both ways (VmHWM, RSS sampler) as a cross-check.
      const SaveSample first =
          ours_save(comm, trainer, resume_file, step++, chunk_bytes, true, true);
      const uint64_t file_bytes = first.file_bytes;
      out["file_bytes"] = file_bytes;

      // Raw-write source: the same number of bytes, in memory, not zero (rank 0 only).
      std::vector<uint8_t> raw_src;
      std::unique_ptr<TorchPeer> peer;
      if (root) {
        raw_src.resize(file_bytes);
        std::mt19937_64 rng(7);
        for (size_t i = 0; i + 8 <= raw_src.size(); i += 8) {
          const uint64_t x = rng();
          std::memcpy(&raw_src[i], &x, 8);
        }
        if (!opt.python.empty()) {
          json spec = json::array();
          for (const auto& s : sources) {
            spec.push_back({{"path", s.path}, {"dtype", ddp::dtype_name(s.dtype)},
                            {"shape", s.shape}});
          }
          const std::string spec_path = opt.dir + "/torch_spec.json";
          std::ofstream(spec_path) << spec.dump();
          progress(root, "starting the torch.save peer");
          peer = std::make_unique<TorchPeer>(opt.python, opt.peer, spec_path);
          out["torch_payload_bytes"] = peer->payload_bytes();
        }
      }
      int has_peer = peer ? 1 : 0;
      comm.broadcast(&has_peer, 1, ddp::DType::kInt32, 0);

      std::vector<std::string> variants{"ours", "raw"};
      if (has_peer) {
        variants.push_back("torch_fsync");
        variants.push_back("torch_nofsync");
      }
      std::map<std::string, std::vector<double>> t;
      std::vector<double> snap, fin, mem_hwm, mem_sampled, fault_bytes, raw_fault_bytes;
      bool hwm_supported = true;
      std::map<std::string, std::vector<double>> warm_t;  // warm-up rounds: printed, not counted
      std::vector<double> scratch;
      for (int w = 0; w < opt.warmup + opt.rounds; ++w) {
        const bool timed = w >= opt.warmup;
        const int r = w - opt.warmup;
        auto& tv = timed ? t : warm_t;
        auto keep = [&](std::vector<double>& v) -> std::vector<double>& {
          return timed ? v : scratch;
        };
        for (size_t k = 0; k < variants.size(); ++k) {
          const std::string& v = variants[(static_cast<size_t>(w) + k) % variants.size()];
          if (root) {
            remove_all_in(save_dir);
            ::sync();
          }
          comm.barrier();
          if (v == "ours") {
            const SaveSample s = ours_save(comm, trainer, save_dir + fmt::format("/step={}.h5", step),
                                           step, chunk_bytes, true, false);
            ++step;
            tv[v].push_back(s.total_s);
            keep(snap).push_back(s.snapshot_s);
            keep(fin).push_back(s.finish_s);
            keep(fault_bytes).push_back(static_cast<double>(s.fault_bytes));
            if (root) {
              if (s.hwm == 0) hwm_supported = false;
              keep(mem_hwm).push_back(static_cast<double>(s.hwm) - static_cast<double>(s.rss_before));
              if (s.sampled_peak) {
                keep(mem_sampled).push_back(static_cast<double>(s.sampled_peak) -
                                      static_cast<double>(s.rss_before));
              }
            }
          } else {
            double secs = 0;
            if (root) {
              if (v == "raw") {
                const uint64_t f0 = minor_fault_bytes();
                const double t0 = now_s();
                raw_write(save_dir + "/raw.bin", raw_src.data(), raw_src.size());
                secs = now_s() - t0;
                keep(raw_fault_bytes).push_back(static_cast<double>(minor_fault_bytes() - f0));
              } else {
                secs = peer->save(save_dir + "/torch.pt", v == "torch_fsync");
              }
            }
            comm.barrier();
            tv[v].push_back(secs);
          }
        }
        progress(root, fmt::format("save {} {}/{}: ours {:.3f} s, raw {:.3f} s{}",
                                   timed ? "round" : "warm-up round (untimed)",
                                   timed ? r + 1 : w + 1, timed ? opt.rounds : opt.warmup,
                                   tv["ours"].back(), tv["raw"].back(),
                                   has_peer ? fmt::format(", torch.save+fsync {:.3f} s",
                                                          tv["torch_fsync"].back())
                                            : std::string()));
      }
      if (root) {
        remove_all_in(save_dir);
        json save;
        for (const auto& v : variants) save[v] = stats(t[v]);
        json warm;
        for (const auto& v : variants) warm[v] = warm_t[v];
        save["warmup_rounds_untimed"] = warm;
        save["ours_snapshot"] = stats(snap);
        save["ours_finish"] = stats(fin);
        save["rank0_first_touch_bytes_ours"] = stats(fault_bytes);
        save["rank0_first_touch_bytes_raw"] = stats(raw_fault_bytes);
        const double ours = median(t["ours"]);
        save["throughput_ours_MBps"] = file_bytes / ours / 1e6;
        save["throughput_raw_MBps"] = file_bytes / median(t["raw"]) / 1e6;
        save["throughput_ratio_ours_vs_raw"] = median(t["raw"]) / ours;
        if (has_peer) {
          save["time_ratio_ours_vs_torch_fsync"] = ours / median(t["torch_fsync"]);
          save["time_ratio_ours_vs_torch_nofsync"] = ours / median(t["torch_nofsync"]);
        }
        json mem;
        mem["method"] = hwm_supported ? "VmHWM reset via clear_refs"
                                      : "1 ms RSS sampler (clear_refs not permitted)";
        // The untimed first save, measured both ways.
        mem["cross_check_hwm"] = first.hwm ? static_cast<double>(first.hwm) -
                                                 static_cast<double>(first.rss_before)
                                           : 0.0;
        mem["cross_check_sampled"] =
            static_cast<double>(first.sampled_peak) - static_cast<double>(first.rss_before);
        mem["extra_bytes_hwm"] = hwm_supported ? stats(mem_hwm) : json();
        mem["extra_bytes_sampled"] = stats(mem_sampled);
        const double extra = hwm_supported ? median(mem_hwm) : median(mem_sampled);
        mem["extra_bytes"] = extra;
        mem["extra_vs_state"] = extra / static_cast<double>(state_bytes);
        mem["extra_vs_chunk"] = extra / static_cast<double>(chunk_bytes);
        mem["extra_vs_rank0_share"] = extra / static_cast<double>(share[0]);
        save["rank0_memory"] = mem;
        out["save"] = save;
      }

      // Resume rounds.
      int can_drop = 0;
      if (root) can_drop = opt.drop_caches && drop_page_cache() ? 1 : 0;
      comm.broadcast(&can_drop, 1, ddp::DType::kInt32, 0);
      std::map<std::string, std::vector<double>> rt;
      std::vector<double> resume_faults;
      const std::vector<std::string> rvariants{"resume", "raw_read", "raw_read_bcast"};
      for (int r = 0; r < opt.rounds; ++r) {
        for (size_t k = 0; k < rvariants.size(); ++k) {
          const std::string& v = rvariants[(static_cast<size_t>(r) + k) % rvariants.size()];
          if (root) {
            if (can_drop) drop_page_cache(); else ::sync();
          }
          comm.barrier();
          if (v == "resume") {
            uint64_t fb = 0;
            rt[v].push_back(resume_once(comm, trainer, resume_file, &fb));
            resume_faults.push_back(static_cast<double>(fb));
          } else if (v == "raw_read") {
            double secs = 0;
            if (root) {
              const double t0 = now_s();
              raw_read(resume_file);
              secs = now_s() - t0;
            }
            comm.barrier();
            rt[v].push_back(secs);
          } else {
            const double t0 = now_s();
            std::vector<uint8_t> bytes;
            uint64_t n = 0;
            if (root) n = raw_read(resume_file, &bytes);
            comm.broadcast(&n, 1, ddp::DType::kInt64, 0);
            bytes.resize(n);
            comm.broadcast(bytes.data(), n, ddp::DType::kUInt8, 0);
            rt[v].push_back(max_over_ranks(comm, now_s() - t0));
          }
        }
        progress(root, fmt::format("resume round {}/{}: resume {:.3f} s, raw read {:.3f} s, "
                                   "raw read + broadcast {:.3f} s",
                                   r + 1, opt.rounds, rt["resume"].back(),
                                   rt["raw_read"].back(), rt["raw_read_bcast"].back()));
      }
      if (root) {
        json res;
        res["page_cache_dropped"] = can_drop == 1;
        for (const auto& v : rvariants) res[v] = stats(rt[v]);
        res["rank0_first_touch_bytes"] = stats(resume_faults);
        res["time_ratio_resume_vs_raw_read"] = median(rt["resume"]) / median(rt["raw_read"]);
        res["time_ratio_resume_vs_raw_read_bcast"] =
            median(rt["resume"]) / median(rt["raw_read_bcast"]);
        out["resume"] = res;
      }

      // Phase breakdown of one save (diagnosis), rank 0 centric, not alternated.
      if (opt.phases) {
        progress(root, "phase breakdown");
        std::vector<double> p_copy, p_hash_share, p_gather, p_h5, p_fsync, p_hash_file,
            p_commit;
        // Host copies of every tensor (rank 0) in the raw buffer, for the HDF5-only write.
        std::vector<size_t> offset(sources.size());
        if (root) {
          size_t off = 0;
          for (size_t i = 0; i < sources.size(); ++i) {
            offset[i] = off;
            off += sources[i].bytes;
          }
          if (off > raw_src.size()) raw_src.resize(off);
          for (size_t i = 0; i < sources.size(); ++i) {
            if (sources[i].bytes) sources[i].copy_to(raw_src.data() + offset[i]);
          }
        }
        const auto meta = make_meta(trainer, world, 999);
        for (int r = 0; r < 3; ++r) {
          if (root) {
            remove_all_in(phase_dir);
            ::sync();
          }
          comm.barrier();
          // Snapshot of rank 0's share: a fresh zero-filled buffer + copy, then xxh3.
          double t0 = now_s();
          std::vector<uint8_t> buf;
          buf.resize(share[static_cast<size_t>(comm.rank())]);
          size_t at = 0;
          for (size_t i = 0; i < sources.size(); ++i) {
            if (owner[i] != comm.rank() || sources[i].bytes == 0) continue;
            sources[i].copy_to(buf.data() + at);
            at += sources[i].bytes;
          }
          p_copy.push_back(max_over_ranks(comm, now_s() - t0));
          t0 = now_s();
          volatile uint64_t sink = ddp::ckpt::checksum_bytes(buf.data(), buf.size());
          (void)sink;
          p_hash_share.push_back(max_over_ranks(comm, now_s() - t0));
          // Gather only: every other rank's share to rank 0 in chunk rounds.
          comm.barrier();
          t0 = now_s();
          uint64_t biggest = 0;
          for (int q = 1; q < world; ++q) biggest = std::max(biggest, share[static_cast<size_t>(q)]);
          const uint64_t rounds = (biggest + chunk_bytes - 1) / chunk_bytes;
          for (uint64_t k = 0; k < rounds; ++k) {
            const size_t off = k * chunk_bytes;
            const size_t n = root || off >= buf.size() ? 0 : std::min(chunk_bytes, buf.size() - off);
            auto got = comm.gather_bytes(n ? buf.data() + off : nullptr, n, 0);
          }
          p_gather.push_back(max_over_ranks(comm, now_s() - t0));
          std::vector<uint8_t>().swap(buf);
          if (root) {
            // HDF5 write of every tensor + close (no fsync).
            const std::string final_path = phase_dir + "/step=999.h5";
            const std::string tmp = ddp::ckpt::temp_path_for(final_path);
            t0 = now_s();
            {
              ddp::ckpt::FileWriter w(tmp, meta);
              for (size_t i = 0; i < sources.size(); ++i) {
                w.add_tensor(sources[i].path, sources[i].dtype, sources[i].shape,
                             raw_src.data() + offset[i], sources[i].bytes);
              }
              for (int q = 0; q < world; ++q) {
                ddp::ckpt::RankState rs;
                rs.rank = q;
                rs.cpu_rng = ddp::cpu_rng_state();
                w.add_rank_state(rs);
              }
              w.close();
            }
            p_h5.push_back(now_s() - t0);
            auto& fsys = ddp::ckpt::default_file_system();
            t0 = now_s();
            fsys.fsync_file(tmp);
            p_fsync.push_back(now_s() - t0);
            t0 = now_s();
            fsys.hash_file(tmp);
            p_hash_file.push_back(now_s() - t0);
            // The whole commit (its fsync finds nothing dirty now: hash + small files).
            t0 = now_s();
            ddp::ckpt::commit_checkpoint(fsys, tmp, final_path, 999, true);
            p_commit.push_back(now_s() - t0);
          }
          comm.barrier();
        }
        if (root) {
          remove_all_in(phase_dir);
          json ph;
          ph["snapshot_alloc_copy"] = stats(p_copy);
          ph["snapshot_xxh3"] = stats(p_hash_share);
          ph["gather"] = stats(p_gather);
          ph["h5_write_close"] = stats(p_h5);
          ph["fsync"] = stats(p_fsync);
          ph["hash_file_cached"] = stats(p_hash_file);
          ph["commit_after_fsync"] = stats(p_commit);
          out["phases"] = ph;
        }
      }
    }

    if (async_trainer) {
      // Stall rounds: a save, then the next training step as the training loop runs it
      // (forward, backward with the DDP engine's bucketed all-reduce, then
      // Checkpointer::before_update and optimizer.step) on a fixed batch.
      // sync: the whole save; async: the snapshot plus the wait in before_update (its copy of
      // the parameters and optimizer state runs during that forward/backward); none: no save.
      std::map<std::string, std::vector<double>> st, step_s;
      std::vector<double> background;
      const std::vector<std::string> variants{"sync", "async", "none"};
      const std::map<std::string, double> metrics;
      const int64_t batch = trainer.config().trainer.batch_size;
      auto next_step = [&](ddp::Trainer& tr) {  // what Trainer::train_step does
        tr.engine().zero_grad();
        torch::manual_seed(1234);
        const torch::Tensor x = torch::randn({batch, opt.features});
        const torch::Tensor y = torch::randint(0, 10, {batch});
        const torch::Tensor loss = torch::nn::functional::cross_entropy(tr.model().forward(x), y);
        tr.engine().prepare_backward(/*sync=*/true);
        loss.backward();  // gradient buckets all-reduced as they fill
        tr.engine().finish_backward();
        tr.checkpointer()->before_update();
        tr.optimizer().step();
      };
      for (int r = 0; r < opt.rounds; ++r) {
        for (size_t k = 0; k < variants.size(); ++k) {
          const std::string& v = variants[(static_cast<size_t>(r) + k) % variants.size()];
          ddp::Trainer& tr = v == "sync" ? trainer : *async_trainer;
          if (root) ::sync();
          comm.barrier();
          tr.state().global_step += 1;  // a new file name each time; retention removes old ones
          if (v != "none") tr.checkpointer()->save_now(metrics, /*wait=*/v == "sync");
          const double t0 = now_s();
          next_step(tr);
          step_s[v].push_back(max_over_ranks(comm, now_s() - t0));
          if (v == "none") continue;
          const double stall = tr.checkpointer()->last_stall_s();  // after before_update
          if (v == "async") {
            const double t1 = now_s();
            tr.checkpointer()->wait();
            background.push_back(max_over_ranks(comm, now_s() - t1));
          }
          st[v].push_back(max_over_ranks(comm, stall));
        }
        progress(root, fmt::format("stall round {}/{}: sync save {:.3f} s, async stall {:.4f} s, "
                                   "next step {:.3f} / {:.3f} / {:.3f} s (none / async / sync)",
                                   r + 1, opt.rounds, st["sync"].back(), st["async"].back(),
                                   step_s["none"].back(), step_s["async"].back(),
                                   step_s["sync"].back()));
      }
      if (root) {
        json s;
        for (const auto& v : {"sync", "async"}) s[v] = stats(st[v]);
        for (const auto& v : variants) s["next_step_" + v] = stats(step_s[v]);
        s["async_background_after_stall"] = stats(background);
        s["stall_ratio_async_vs_sync"] = median(st["async"]) / median(st["sync"]);
        // Stricter: the async save's whole cost to the training thread -- its stall plus how
        // much slower the next step ran (CPU shared with the background copy and gather).
        s["next_step_slowdown_async_s"] = median(step_s["async"]) - median(step_s["none"]);
        out["stall"] = s;
      }
    }

    if (root) {
      std::printf("%s\n", out.dump(2).c_str());
      std::fflush(stdout);
      fs::remove_all(opt.dir);
    }
    comm.barrier();
    return 0;
  } catch (const std::exception& e) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "bench_checkpoint: error on rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
