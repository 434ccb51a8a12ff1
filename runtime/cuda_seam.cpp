#include "runtime/cuda_seam.h"

#include <torch/torch.h>

#include <fmt/format.h>

#if defined(DDP_TORCH_HAS_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <cstring>
#include <mutex>

#include "collectives/error.h"

namespace ddp {

bool torch_cuda_available() { return torch::cuda::is_available(); }

void* torch_current_cuda_stream() {
#if defined(DDP_TORCH_HAS_CUDA)
  if (torch::cuda::is_available()) return c10::cuda::getCurrentCUDAStream().stream();
#endif
  return nullptr;
}

void torch_cuda_synchronize() {
#if defined(DDP_TORCH_HAS_CUDA)
  if (torch::cuda::is_available()) c10::cuda::getCurrentCUDAStream().synchronize();
#endif
}

std::vector<uint8_t> torch_cuda_rng_state() {
#if defined(DDP_TORCH_HAS_CUDA)
  if (torch::cuda::is_available()) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    torch::Tensor s = gen.get_state();
    const auto* p = s.data_ptr<uint8_t>();
    return std::vector<uint8_t>(p, p + s.numel());
  }
#endif
  return {};
}

void torch_set_cuda_rng_state(const std::vector<uint8_t>& state) {
#if defined(DDP_TORCH_HAS_CUDA)
  if (torch::cuda::is_available() && !state.empty()) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    auto t = torch::empty({static_cast<int64_t>(state.size())}, torch::kUInt8);
    std::memcpy(t.data_ptr(), state.data(), state.size());
    gen.set_state(t);
  }
#else
  (void)state;
#endif
}

void torch_copy_cuda_to_host(const at::Tensor& src, void* dst) {
#if defined(DDP_TORCH_HAS_CUDA)
  if (src.is_cuda()) {
    const c10::cuda::CUDAGuard device(src.device());
    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(src.device().index());
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, src.device().index());
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(side);  // the copy sees every kernel queued before the snapshot
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      torch::Tensor host = torch::from_blob(dst, src.sizes(),
                                            torch::TensorOptions().dtype(src.dtype()));
      host.copy_(src.contiguous(), /*non_blocking=*/true);
      // The source's memory must not be reused by the compute stream before the copy is done.
      src.record_stream(side);
    }
    side.synchronize();
    return;
  }
#endif
  (void)dst;
  throw Error(ErrorKind::kInternal,
              fmt::format("torch_copy_cuda_to_host: a {} tensor in a build without CUDA",
                          src.device().str()));
}

bool torch_pin_host_memory(void* ptr, size_t bytes) {
#if defined(DDP_TORCH_HAS_CUDA)
  if (ptr != nullptr && bytes > 0 && torch::cuda::is_available()) {
    return cudaHostRegister(ptr, bytes, cudaHostRegisterDefault) == cudaSuccess;
  }
#else
  (void)ptr;
  (void)bytes;
#endif
  return false;
}

void torch_unpin_host_memory(void* ptr) {
#if defined(DDP_TORCH_HAS_CUDA)
  if (ptr != nullptr) (void)cudaHostUnregister(ptr);
#else
  (void)ptr;
#endif
}

}  // namespace ddp
