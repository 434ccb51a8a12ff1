// bench_ddp: what the DdpEngine costs and what bucketing/overlap buys, each as a ratio against a
// peer measured in the same process, in alternating blocks of steps.
//
//   mpirun -np 1 bench_ddp overhead [--rounds N] [--steps S] [--warmup W] [--hidden 256,256]
//   mpirun -np 2 bench_ddp buckets  [--rounds N] [--steps S] [--warmup W] [--hidden 1024,...]
//   mpirun -np 2 bench_ddp agreement [--rounds N] [--steps S] [--warmup W] [--hidden 512,512]
//   mpirun -np 1 bench_ddp overhead --device cuda ...   (the same on the GPU; bench/gpu.sh)
//   mpirun -np 1 bench_ddp snapshot [--rounds N] [--mb 256]   (GPU only)
//
// overhead: the default MLP (64 -> hidden -> 10, batch 64, AdamW, cross-entropy, random data)
//   trained with the DdpEngine (zero_grad / prepare_backward / backward / finish_backward /
//   step) and, on a second replica with the same initial weights, with the plain LibTorch loop
//   (optimizer zero_grad / backward / step). At world size 1 the all-reduces are no-ops, so the
//   ratio is the engine's own cost: hooks, locking, bucket views, the non-blocking calls.
// buckets: a larger MLP so that communication matters, one replica per variant:
//   bucket_cap_mb 1, 25, 100 with overlap on, "compute_only" (the plain LibTorch loop with no
//   all-reduce: the limit a fully hidden all-reduce reaches) and "no overlap" (one bucket,
//   reduced after backward). Ratios are against "no overlap". The share of the all-reduce
//   hidden behind backward is (no_overlap - bucket) / (no_overlap - compute_only).
// agreement: the cost of the trainer's per-step preemption agreement (one 8-byte non-blocking
//   MPI all-reduce started after each optimizer step and waited after the next, as Trainer::fit) on the default config's model
//   (MLP 64 -> [512, 512] -> 10, batch 64, AdamW): DDP steps with it ("ddp_agreement") against
//   the same steps without it ("ddp"). Skew between ranks that the agreement absorbs would
//   otherwise be absorbed by the next gradient all-reduce, so the ratio is its marginal cost.
//
// snapshot: device-to-host bandwidth of a checkpoint snapshot of GPU memory
//   (torch_copy_cuda_to_host, runtime/cuda_seam.h) into page-locked host memory, against the
//   same copy into ordinary (pageable) memory; GB/s, medians over rounds, alternating.
//
// A round runs one block of `steps` steps of every variant, rotating which goes first; a
// block's time is the slowest rank's. Figures are medians over rounds of the per-step time.
// Rank 0 prints one JSON object on stdout; progress goes to stderr.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "collectives/mpi_communicator.h"
#include "runtime/config.h"
#include "runtime/cuda_seam.h"
#include "runtime/ddp_engine.h"
#include "runtime/models/model.h"
#include "runtime/optim.h"

namespace {

constexpr int64_t kBatch = 64;      // per-rank batch, as trainer.batch_size in the default config
constexpr int64_t kFeatures = 64;   // data.num_features
constexpr int64_t kClasses = 10;    // data.num_classes
constexpr int64_t kNumBatches = 8;  // distinct random batches cycled through

struct Options {
  std::string mode;
  int rounds = 0;   // alternating rounds (0: the mode's default)
  int steps = 0;    // steps per block (0: the mode's default)
  int warmup = 0;   // untimed steps per variant before the first round (0: default)
  std::vector<int64_t> hidden;  // MLP hidden sizes (empty: the mode's default)
  std::string device = "cpu";   // overhead: cpu | cuda
  int64_t mb = 256;             // snapshot: bytes copied per round, MiB
};

[[noreturn]] void usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s overhead|buckets|agreement|snapshot [--rounds N] [--steps S] "
               "[--warmup W] [--hidden A,B,...] [--device cpu|cuda] [--mb M]\n",
               argv0, why.c_str(), argv0);
  std::exit(2);
}

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

Options parse(int argc, char** argv) {
  if (argc < 2) usage(argv[0], "missing mode");
  Options o;
  o.mode = argv[1];
  if (o.mode != "overhead" && o.mode != "buckets" && o.mode != "agreement" &&
      o.mode != "snapshot") usage(argv[0], "unknown mode '" + o.mode + "'");
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value for " + a);
    const std::string v = argv[++i];
    if (a == "--rounds") {
      o.rounds = std::stoi(v);
    } else if (a == "--steps") {
      o.steps = std::stoi(v);
    } else if (a == "--warmup") {
      o.warmup = std::stoi(v);
    } else if (a == "--hidden") {
      o.hidden = parse_sizes(v);
    } else if (a == "--device") {
      o.device = v;
      if (v != "cpu" && v != "cuda") usage(argv[0], "--device must be cpu or cuda");
    } else if (a == "--mb") {
      o.mb = std::stoll(v);
    } else {
      usage(argv[0], "unknown option " + a);
    }
  }
  const bool overhead = o.mode == "overhead" || o.mode == "agreement";  // small-step modes
  if (o.rounds == 0) o.rounds = overhead ? 41 : 9;
  if (o.steps == 0) o.steps = overhead ? 100 : 8;
  if (o.warmup == 0) o.warmup = overhead ? 50 : 3;
  if (o.hidden.empty() && o.mode == "agreement") o.hidden = {512, 512};  // configs/default.yaml
  if (o.hidden.empty()) {
    o.hidden = overhead ? std::vector<int64_t>{256, 256}
                        : std::vector<int64_t>{1024, 1024, 1024, 1024};
  }
  if (o.rounds < 1 || o.steps < 1 || o.warmup < 0) usage(argv[0], "counts must be positive");
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string json_list(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.4f", i ? ", " : "", v[i]);
    s += buf;
  }
  return s + "]";
}

// One way of training one replica.
struct Variant {
  std::string name;
  bool use_engine = false;
  bool agreement = false;  // the trainer's per-step stop agreement after the step
  int64_t stop_flag[2] = {0, 0};
  int stop_slot = 0;
  std::unique_ptr<ddp::Work> stop_work;
  ddp::DdpOptions ddp_options;
  std::shared_ptr<ddp::Model> model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<ddp::DdpEngine> engine;
  std::vector<double> step_ms;  // per-step time of each timed block
  int64_t launched_in_backward = 0;  // buckets launched from hooks in the last step
};

struct Bench {
  ddp::MpiCommunicator& comm;
  std::vector<torch::Tensor> xs, ys;
  int64_t next_batch = 0;

  void step(Variant& v) {
    const torch::Tensor& x = xs[next_batch % kNumBatches];
    const torch::Tensor& y = ys[next_batch % kNumBatches];
    ++next_batch;
    if (v.use_engine) {
      v.engine->zero_grad();
      torch::Tensor loss = ddp::compute_loss(ddp::Task::kClassification, v.model->forward(x), y);
      v.engine->prepare_backward(/*sync=*/true);
      loss.backward();
      v.engine->finish_backward();
      v.launched_in_backward = v.engine->stats().buckets_launched_in_backward;
    } else {
      v.optimizer->zero_grad();
      torch::Tensor loss = ddp::compute_loss(ddp::Task::kClassification, v.model->forward(x), y);
      loss.backward();
    }
    v.optimizer->step();
    if (v.agreement) {
      // As Trainer::fit: wait for the agreement started after the previous step, start this
      // step's (non-blocking; it completes during the next step's gradient all-reduces).
      if (v.stop_work) v.stop_work->wait();
      v.stop_flag[v.stop_slot] = 0;
      v.stop_work = comm.all_reduce_async(&v.stop_flag[v.stop_slot], 1, ddp::DType::kInt64,
                                          ddp::ReduceOp::kMax);
      v.stop_slot ^= 1;
    }
  }

  // Seconds for `steps` steps, the slowest rank's.
  double time_block(Variant& v, int steps) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) step(v);
    if (v.stop_work) {  // the block ends with the trainer's loop: nothing left in flight
      v.stop_work->wait();
      v.stop_work.reset();
    }
    ddp::torch_cuda_synchronize();  // GPU work is asynchronous (no-op on CPU)
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return s;
  }
};

void make_replica(Variant& v, const std::vector<int64_t>& hidden, ddp::MpiCommunicator& comm,
                  const torch::Device& device) {
  ddp::ModelConfig mc;
  mc.name = "mlp";
  mc.hidden_sizes = hidden;
  ddp::DatasetInfo info;
  info.task = ddp::Task::kClassification;
  info.input_shape = {kFeatures};
  info.num_outputs = kClasses;
  torch::manual_seed(42);  // every replica starts from the same weights
  v.model = ddp::ModelRegistry::global().create(mc, info);
  v.model->to(device);
  v.model->train();
  if (v.use_engine) {
    v.engine = std::make_unique<ddp::DdpEngine>(v.model, comm, comm, v.ddp_options);
  }
  ddp::OptimizerConfig oc;  // adamw, lr 1e-3, as configs/default.yaml
  v.optimizer = ddp::make_optimizer(oc, v.model->parameters());
}

int64_t parameter_count(const ddp::Model& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

std::string hidden_string(const std::vector<int64_t>& hidden) {
  std::string s = "[";
  for (size_t i = 0; i < hidden.size(); ++i) s += (i ? "," : "") + std::to_string(hidden[i]);
  return s + "]";
}

// Device-to-host snapshot bandwidth: pinned vs pageable destination, alternating rounds.
int snapshot_mode(const Options& opt, ddp::MpiCommunicator& comm) {
  if (!ddp::torch_cuda_available()) {
    throw ddp::Error(ddp::ErrorKind::kInvalidArgument, "snapshot mode needs a CUDA GPU");
  }
  const int64_t bytes = opt.mb << 20;
  const auto src = torch::rand({bytes / 4}, torch::Device(torch::kCUDA, 0));
  std::vector<uint8_t> pinned(static_cast<size_t>(bytes)), pageable(static_cast<size_t>(bytes));
  const bool is_pinned = ddp::torch_pin_host_memory(pinned.data(), pinned.size());
  std::vector<double> gbps_pinned, gbps_pageable;
  auto once = [&](std::vector<uint8_t>& dst) {
    ddp::torch_cuda_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    ddp::torch_copy_cuda_to_host(src, dst.data());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(bytes) / s / 1e9;
  };
  once(pinned);
  once(pageable);  // first touch of both, untimed
  const int rounds = opt.rounds > 0 ? opt.rounds : 11;
  for (int r = 0; r < rounds; ++r) {
    if (r % 2 == 0) {
      gbps_pinned.push_back(once(pinned));
      gbps_pageable.push_back(once(pageable));
    } else {
      gbps_pageable.push_back(once(pageable));
      gbps_pinned.push_back(once(pinned));
    }
  }
  if (is_pinned) ddp::torch_unpin_host_memory(pinned.data());
  if (comm.rank() == 0) {
    std::printf("{\n  \"mode\": \"snapshot\",\n  \"bytes\": %lld,\n  \"rounds\": %d,\n"
                "  \"pinned_registered\": %s,\n  \"pinned_GBps\": %.3f,\n"
                "  \"pageable_GBps\": %.3f,\n  \"pinned_vs_pageable\": %.3f,\n"
                "  \"pinned_samples\": %s,\n  \"pageable_samples\": %s\n}\n",
                static_cast<long long>(bytes), rounds, is_pinned ? "true" : "false",
                median(gbps_pinned), median(gbps_pageable),
                median(gbps_pinned) / median(gbps_pageable), json_list(gbps_pinned).c_str(),
                json_list(gbps_pageable).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ddp::MpiRuntime mpi(&argc, &argv);
  const Options opt = parse(argc, argv);
  torch::set_num_threads(1);
  try {
    ddp::MpiCommunicator comm;
    const bool root = comm.rank() == 0;

    std::vector<Variant> variants;
    if (opt.mode == "overhead") {
      variants.resize(2);
      variants[0].name = "plain";
      variants[1].name = "ddp";
      variants[1].use_engine = true;
    } else if (opt.mode == "agreement") {
      variants.resize(2);
      variants[0].name = "ddp";
      variants[0].use_engine = true;
      variants[1].name = "ddp_agreement";
      variants[1].use_engine = true;
      variants[1].agreement = true;
    } else {
      const double caps[] = {1.0, 25.0, 100.0};
      for (double cap : caps) {
        Variant v;
        v.name = "bucket_" + std::to_string(static_cast<int>(cap)) + "mb";
        v.use_engine = true;
        v.ddp_options.bucket_cap_mb = cap;
        variants.push_back(std::move(v));
      }
      // The compute-only limit: the same steps with no gradient all-reduce at all (each
      // rank trains its own replica), what a perfectly hidden all-reduce would cost.
      Variant compute;
      compute.name = "compute_only";
      variants.push_back(std::move(compute));
      Variant none;
      none.name = "no_overlap";
      none.use_engine = true;
      none.ddp_options.bucket_cap_mb = 1e6;  // one bucket for the whole model
      none.ddp_options.overlap = false;
      variants.push_back(std::move(none));
    }
    if (opt.mode == "snapshot") return snapshot_mode(opt, comm);
    if (opt.device == "cuda" && (opt.mode != "overhead" || comm.size() != 1)) {
      throw ddp::Error(ddp::ErrorKind::kInvalidArgument,
                       "--device cuda is for the overhead mode at world size 1");
    }
    if (opt.device == "cuda" && !ddp::torch_cuda_available()) {
      throw ddp::Error(ddp::ErrorKind::kInvalidArgument, "--device cuda: no usable CUDA GPU");
    }
    const torch::Device device = opt.device == "cuda" ? torch::Device(torch::kCUDA, 0)
                                                      : torch::Device(torch::kCPU);
    for (auto& v : variants) make_replica(v, opt.hidden, comm, device);

    Bench bench{comm, {}, {}, 0};
    torch::manual_seed(1000 + comm.rank());  // each rank its own data, as a sharded sampler
    for (int64_t i = 0; i < kNumBatches; ++i) {
      bench.xs.push_back(torch::randn({kBatch, kFeatures}).to(device));
      bench.ys.push_back(torch::randint(kClasses, {kBatch}, torch::kLong).to(device));
    }

    for (auto& v : variants) bench.time_block(v, opt.warmup);
    const size_t nv = variants.size();
    for (int r = 0; r < opt.rounds; ++r) {
      for (size_t k = 0; k < nv; ++k) {
        Variant& v = variants[(r + k) % nv];
        v.step_ms.push_back(bench.time_block(v, opt.steps) / opt.steps * 1e3);
      }
      if (root && (r + 1) % 5 == 0) {
        std::fprintf(stderr, "bench_ddp %s: round %d/%d\n", opt.mode.c_str(), r + 1, opt.rounds);
      }
    }

    if (root) {
      // The reference: "plain" for overhead, "ddp" for agreement, "no_overlap" for buckets.
      const Variant& ref = opt.mode == "buckets" ? variants.back() : variants.front();
      const int64_t params = parameter_count(*variants[0].model);
      std::printf("{\n  \"mode\": \"%s\",\n  \"device\": \"%s\",\n  \"world_size\": %d,\n  \"hidden\": %s,\n"
                  "  \"parameters\": %lld,\n  \"grad_mb\": %.3f,\n  \"batch\": %lld,\n"
                  "  \"rounds\": %d,\n  \"steps_per_block\": %d,\n  \"variants\": [\n",
                  opt.mode.c_str(), opt.device.c_str(), comm.size(), hidden_string(opt.hidden).c_str(),
                  static_cast<long long>(params), params * 4.0 / (1024.0 * 1024.0),
                  static_cast<long long>(kBatch), opt.rounds, opt.steps);
      const double base = median(ref.step_ms);
      for (size_t i = 0; i < nv; ++i) {
        const Variant& v = variants[i];
        const double med = median(v.step_ms);
        std::printf("    {\"name\": \"%s\", \"engine\": %s, \"bucket_cap_mb\": %g, "
                    "\"overlap\": %s, \"num_buckets\": %lld, \"buckets_launched_in_backward\": "
                    "%lld, \"median_step_ms\": %.4f, \"ratio_vs_%s\": %.4f, \"step_ms\": %s}%s\n",
                    v.name.c_str(), v.use_engine ? "true" : "false",
                    v.use_engine ? v.ddp_options.bucket_cap_mb : 0.0,
                    v.use_engine && v.ddp_options.overlap ? "true" : "false",
                    static_cast<long long>(v.engine ? v.engine->bucket_count() : 0),
                    static_cast<long long>(v.launched_in_backward), med, ref.name.c_str(),
                    med / base, json_list(v.step_ms).c_str(), i + 1 < nv ? "," : "");
      }
      std::printf("  ]\n}\n");
      std::fflush(stdout);
    }
    comm.barrier();
    return 0;
  } catch (const std::exception& e) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "bench_ddp: error on rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
