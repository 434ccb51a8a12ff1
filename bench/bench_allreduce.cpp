// bench_allreduce: MpiCommunicator::all_reduce against raw MPI_Allreduce, same buffer, same run.
//
//   mpirun -np 2 bench_allreduce [--rounds N] [--min-bytes B] [--max-bytes B]
//                        [--block-mb M] [--min-iters K]
//
// For each message size (4 KiB .. 64 MiB of float32, x4 steps) it runs `rounds` rounds; a
// round times three back-to-back blocks of `iters` calls each (iters: about block-mb MiB of
// payload per block, at least min-iters calls):
//   raw    MPI_Allreduce(MPI_IN_PLACE, ..., MPI_COMM_WORLD)
//   comm   ddp::MpiCommunicator::all_reduce(sum, in place)
//   async  ddp::MpiCommunicator::all_reduce_async(...)->wait()
// and the order of the three rotates from round to round, so none always runs first (warm
// cache) or right after another (cold cache). A block's time is the slowest rank's; the
// per-call time of a method is the median over rounds of block time / iters. Noise on a
// shared machine therefore hits all three alike and the medians discard the outliers.
//
// Bus bandwidth follows nccl-tests: busbw = 2 * (n - 1) / n * bytes / time, so the figure is
// comparable across world sizes.
//
// Rank 0 prints CSV on stdout (one header line, one line per size); progress goes to stderr.
// The buffer holds zeros: repeated in-place sums of anything else overflow to inf within a
// few hundred calls, and zero is as fast as any normal float.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "collectives/error.h"
#include "collectives/mpi_communicator.h"

namespace {

struct Options {
  int rounds = 11;                  // alternating rounds per size (odd: a true median)
  size_t min_bytes = 4 << 10;       // smallest message, bytes
  size_t max_bytes = 64 << 20;      // largest message, bytes
  size_t block_bytes = 64 << 20;    // bytes one block (all iters of one method) aims to reduce
  int min_iters = 5;                // calls per block at least, however large the message
};

enum Method { kRaw = 0, kComm = 1, kAsync = 2, kNumMethods = 3 };
const char* const kMethodNames[kNumMethods] = {"raw", "comm", "async"};

[[noreturn]] void usage(const char* argv0, const char* bad) {
  std::fprintf(stderr,
               "%s: bad argument '%s'\nusage: %s [--rounds N] [--min-bytes B] [--max-bytes B] "
               "[--block-mb M] [--min-iters K]\n",
               argv0, bad, argv0);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(argv[0], argv[i]);
      return argv[++i];
    };
    if (a == "--rounds") {
      o.rounds = std::atoi(value());
    } else if (a == "--min-bytes") {
      o.min_bytes = std::strtoull(value(), nullptr, 10);
    } else if (a == "--max-bytes") {
      o.max_bytes = std::strtoull(value(), nullptr, 10);
    } else if (a == "--block-mb") {
      o.block_bytes = static_cast<size_t>(std::atof(value()) * (1 << 20));
    } else if (a == "--min-iters") {
      o.min_iters = std::atoi(value());
    } else {
      usage(argv[0], argv[i]);
    }
  }
  if (o.rounds < 1 || o.min_bytes < 4 || o.max_bytes < o.min_bytes || o.block_bytes < 1 || o.min_iters < 1) {
    usage(argv[0], "(out of range)");
  }
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs `iters` calls of `method` and returns the slowest rank's elapsed seconds.
double time_block(Method method, ddp::MpiCommunicator& comm, float* data, size_t count,
                  int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  for (int i = 0; i < iters; ++i) {
    switch (method) {
      case kRaw:
        MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                      MPI_COMM_WORLD);
        break;
      case kComm:
        comm.all_reduce(data, count, ddp::DType::kFloat32, ddp::ReduceOp::kSum);
        break;
      case kAsync:
        comm.all_reduce_async(data, count, ddp::DType::kFloat32, ddp::ReduceOp::kSum)->wait();
        break;
      default: break;
    }
  }
  double elapsed = MPI_Wtime() - t0;
  MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return elapsed;
}

// Iterations per block: enough calls to move about `block_bytes` (so small messages are timed
// over many calls), but at least `min_iters`. A function of the size alone, so every rank
// agrees without a (noisy) probe.
int choose_iters(size_t bytes, const Options& o) {
  const double want = static_cast<double>(o.block_bytes) / static_cast<double>(bytes);
  return static_cast<int>(std::clamp(want, static_cast<double>(o.min_iters), 2000.0));
}

}  // namespace

int main(int argc, char** argv) {
  ddp::MpiRuntime mpi(&argc, &argv);
  const Options opt = parse(argc, argv);
  try {
    ddp::MpiCommunicator comm;
    const int n = comm.size();
    const bool root = comm.rank() == 0;
    const size_t max_count = opt.max_bytes / sizeof(float);
    std::vector<float> buffer(max_count, 0.0f);

    if (root) {
      std::printf("bytes,world_size,iters,rounds,raw_us,comm_us,async_us,raw_busbw_gbps,"
                  "comm_busbw_gbps,async_busbw_gbps,comm_vs_raw,async_vs_raw\n");
    }
    for (size_t bytes = opt.min_bytes; bytes <= opt.max_bytes; bytes *= 4) {
      const size_t count = bytes / sizeof(float);
      // Warm-up: first touch of the pages, MPI's shared-memory segments, Iallreduce schedules.
      for (int m = 0; m < kNumMethods; ++m) {
        time_block(static_cast<Method>(m), comm, buffer.data(), count, 2);
      }
      const int iters = choose_iters(bytes, opt);

      std::vector<double> per_call[kNumMethods];
      for (int r = 0; r < opt.rounds; ++r) {
        for (int k = 0; k < kNumMethods; ++k) {
          const auto m = static_cast<Method>((r + k) % kNumMethods);
          per_call[m].push_back(time_block(m, comm, buffer.data(), count, iters) / iters);
        }
      }
      if (!root) continue;
      double med[kNumMethods], busbw[kNumMethods];
      for (int m = 0; m < kNumMethods; ++m) {
        med[m] = median(per_call[m]);
        busbw[m] = 2.0 * (n - 1) / n * static_cast<double>(bytes) / med[m] / 1e9;
      }
      // Ratios are throughput ratios (raw time / our time): >= 1 means as fast as raw MPI.
      std::printf("%zu,%d,%d,%d,%.3f,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f\n", bytes, n, iters,
                  opt.rounds, med[kRaw] * 1e6, med[kComm] * 1e6, med[kAsync] * 1e6, busbw[kRaw],
                  busbw[kComm], busbw[kAsync], med[kRaw] / med[kComm], med[kRaw] / med[kAsync]);
      std::fflush(stdout);
      std::fprintf(stderr, "bench_allreduce: %zu bytes done (%d iters x %d rounds)\n", bytes,
                   iters, opt.rounds);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce: error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
