// The GPU path under mpirun (issue: GPU correctness). Every test skips where this LibTorch has
// no CUDA or there are fewer GPUs than ranks, so the suite runs everywhere; bench/gpu.sh runs
// it on a GPU machine. Covered: training on CUDA through the NCCL backend matches the same job
// on CPU; bf16-mixed and 16-mixed (loss scaler state checkpointed and restored); a GPU
// checkpoint loads on CPU and a CPU checkpoint on the GPU, weights bitwise equal; the
// snapshot of GPU tensors into pinned host memory; ZeRO stage 1 through NCCL.
#include <gtest/gtest.h>

#include <filesystem>

#include <torch/torch.h>

#include "checkpoint/format_reader.h"
#include "runtime/checkpointer.h"
#include "runtime/config.h"
#include "runtime/cuda_seam.h"
#include "runtime/load_api.h"
#include "runtime/state_io.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

using test::world;
namespace fs = std::filesystem;

#define DDP_REQUIRE_GPUS()                                                                  \
  do {                                                                                      \
    if (!torch_cuda_available()) GTEST_SKIP() << "no CUDA GPU (or a CPU-only LibTorch)";   \
    if (static_cast<int>(torch::cuda::device_count()) < world().size())                     \
      GTEST_SKIP() << "needs one GPU per rank";                                             \
  } while (0)

Config gpu_config(const std::string& root, const std::string& name,
                  std::vector<std::string> extra = {}) {
  std::vector<std::string> o{"trainer.default_root_dir=" + root, "trainer.name=" + name,
                             "trainer.max_steps=24", "trainer.max_epochs=-1",
                             "trainer.batch_size=16", "trainer.progress_bar=off",
                             "trainer.check_val_every_n_epoch=0", "data.num_samples=1024",
                             "model.hidden_sizes=[64, 64]", "model.dropout=0.0",
                             "optimizer.name=adamw", "model.device=cuda", "ddp.backend=auto"};
  o.insert(o.end(), extra.begin(), extra.end());
  return load_config_from_string("{}", o);
}

std::string newest_checkpoint(const std::string& dir) {
  std::string best;
  int64_t best_step = -1;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string p = e.path().string();
    if (e.path().extension() != ".h5" || e.path().filename() == "last.h5") continue;
    const int64_t step = ckpt::read_meta(p).global_step;
    if (step > best_step) best = p, best_step = step;
  }
  return best;
}

TEST(Gpu, TrainingOnCudaMatchesTheSameJobOnCpu) {
  DDP_REQUIRE_GPUS();
  auto& comm = world();
  const std::string root = test::temp_dir("gpu_vs_cpu");
  Trainer gpu(gpu_config(root, "gpu"), comm);
  EXPECT_STREQ(gpu.grad_comm().backend_name(), "nccl");
  gpu.fit();
  Trainer cpu(gpu_config(root, "cpu", {"model.device=cpu", "ddp.backend=mpi"}), comm);
  cpu.fit();
  auto ref = cpu.model().named_parameters();
  for (const auto& item : gpu.model().named_parameters()) {
    ASSERT_TRUE(item.value().is_cuda()) << item.key();
    const double diff = (item.value().cpu() - ref[item.key()]).abs().max().item<double>();
    EXPECT_LT(diff, 1e-4) << item.key();
  }
}

TEST(Gpu, MixedPrecisionLearnsAndTheLossScalerIsCheckpointed) {
  DDP_REQUIRE_GPUS();
  auto& comm = world();
  for (const std::string precision : {"bf16-mixed", "16-mixed"}) {
    const std::string root = test::temp_dir("gpu_amp_" + precision);
    Config c = gpu_config(root, "amp", {"trainer.precision=" + precision,
                                        "checkpoint.every_n_train_steps=8"});
    double scale = 0;
    {
      Trainer t(c, comm);
      const double before = t.validate();
      t.fit();
      EXPECT_LT(t.validate(), before) << precision;
      for (const auto& p : t.model().parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
      ASSERT_EQ(t.grad_scaler() != nullptr, precision == "16-mixed");
      if (t.grad_scaler()) scale = t.grad_scaler()->current_scale();
    }
    const std::string path = newest_checkpoint(root + "/amp/checkpoints");
    ASSERT_FALSE(path.empty());
    const auto meta = ckpt::read_meta(path);
    EXPECT_EQ(meta.grad_scaler_json.empty(), precision != "16-mixed") << path;
    if (precision != "16-mixed") continue;
    Config r = c;
    r.checkpoint.resume = "auto";
    Trainer resumed(r, comm);
    ASSERT_NE(resumed.grad_scaler(), nullptr);
    EXPECT_DOUBLE_EQ(resumed.grad_scaler()->current_scale(), scale);
  }
}

// ZeRO stage 1 through NCCL (reduce-scatter, in-place all-gather; grouped per-owner
// reduce/broadcast when ranks own unequal shares), with fp32 and with the loss scaler, whose
// overflow decision is agreed over the ranks: the same parameters as stage 0.
TEST(Gpu, ZeroStageOneMatchesStageZeroThroughNccl) {
  DDP_REQUIRE_GPUS();
  auto& comm = world();
  for (const std::string precision : {"32", "16-mixed"}) {
    const std::string root = test::temp_dir("gpu_zero_" + precision);
    Trainer s1(gpu_config(root, "s1", {"trainer.precision=" + precision, "ddp.zero_stage=1",
                                       "trainer.gradient_clip_val=0.5"}),
               comm);
    EXPECT_STREQ(s1.grad_comm().backend_name(), "nccl");
    s1.fit();
    Trainer s0_clip(gpu_config(root, "s0c", {"trainer.precision=" + precision,
                                             "trainer.gradient_clip_val=0.5"}),
                    comm);
    s0_clip.fit();
    auto ref = s0_clip.model().named_parameters();
    for (const auto& item : s1.model().named_parameters()) {
      const double diff = (item.value() - ref[item.key()]).abs().max().item<double>();
      EXPECT_LT(diff, 1e-4) << precision << " " << item.key();
    }
  }
}

TEST(Gpu, GpuCheckpointLoadsOnCpuAndCpuCheckpointOnGpu) {
  DDP_REQUIRE_GPUS();
  auto& comm = world();
  const std::string root = test::temp_dir("gpu_map_location");
  Trainer gpu(gpu_config(root, "gpu", {"checkpoint.every_n_train_steps=24"}), comm);
  gpu.fit();
  Trainer cpu(gpu_config(root, "cpu", {"model.device=cpu", "ddp.backend=mpi",
                                       "checkpoint.every_n_train_steps=24"}),
              comm);
  cpu.fit();
  if (comm.rank() != 0) return;
  const LoadedModel on_cpu =
      load_from_checkpoint(newest_checkpoint(root + "/gpu/checkpoints"), LoadOptions{"cpu"});
  auto want = gpu.model().named_parameters();
  for (const auto& item : on_cpu.model->named_parameters()) {
    EXPECT_TRUE(item.value().device().is_cpu());
    EXPECT_TRUE(torch::equal(item.value(), want[item.key()].cpu())) << item.key();
  }
  const LoadedModel on_gpu =
      load_from_checkpoint(newest_checkpoint(root + "/cpu/checkpoints"), LoadOptions{"cuda"});
  auto want_cpu = cpu.model().named_parameters();
  for (const auto& item : on_gpu.model->named_parameters()) {
    EXPECT_TRUE(item.value().is_cuda());
    EXPECT_TRUE(torch::equal(item.value().cpu(), want_cpu[item.key()])) << item.key();
  }
}

TEST(Gpu, SnapshotCopiesDeviceTensorsIntoPinnedHostMemory) {
  DDP_REQUIRE_GPUS();
  const auto src = torch::randn({1 << 20}, torch::Device(torch::kCUDA, 0));
  const size_t bytes = static_cast<size_t>(src.numel()) * src.element_size();
  std::vector<uint8_t> host(bytes);
  const bool pinned = torch_pin_host_memory(host.data(), bytes);
  EXPECT_TRUE(pinned);
  // Queue work on the compute stream first: the snapshot must see its result.
  const auto doubled = src * 2;
  torch_copy_cuda_to_host(doubled, host.data());
  const auto back = torch::from_blob(host.data(), {src.numel()}, torch::kFloat32);
  EXPECT_TRUE(torch::equal(back, doubled.cpu()));
  if (pinned) torch_unpin_host_memory(host.data());
  // Through the checkpoint sources, as a save does: not readable in place, copied.
  torch::nn::Linear lin(4, 3);
  lin->to(torch::Device(torch::kCUDA, 0));
  auto params = lin->named_parameters();
  for (const auto& s : model_sources(*lin)) {
    EXPECT_EQ(s.host_data, nullptr) << s.path;
    std::vector<uint8_t> out(s.bytes);
    s.copy_to(out.data());
    const std::string name = s.path.substr(s.path.find('/') + 1);
    const auto cpu = params[name].detach().cpu();
    EXPECT_EQ(std::memcmp(out.data(), cpu.data_ptr(), s.bytes), 0) << s.path;
  }
}

}  // namespace
}  // namespace ddp
