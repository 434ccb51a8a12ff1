#include "runtime/cuda_seam.h"

#include <torch/torch.h>

#if defined(DDP_TORCH_HAS_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

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

}  // namespace ddp
