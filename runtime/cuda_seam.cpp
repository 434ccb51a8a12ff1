#include "runtime/cuda_seam.h"

#include <torch/torch.h>

#if defined(DDP_TORCH_HAS_CUDA)
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstring>
#include <mutex>

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

}  // namespace ddp
