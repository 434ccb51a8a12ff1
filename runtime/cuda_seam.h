// The one seam between ddp-runtime and a CUDA-enabled LibTorch.
//
// Debian's LibTorch is CPU-only; the PyPI wheel's LibTorch has CUDA. Everything that needs
// torch's CUDA API (the current stream, device count as torch sees it, RNG state, snapshot
// copies into pinned memory) is behind these
// functions, compiled for real only when DDP_TORCH_HAS_CUDA is set by CMake. Without it they
// report "no CUDA" and the NCCL backend, which still compiles and links, is never selected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace at {
class Tensor;
}

namespace ddp {

// True when this LibTorch was built with CUDA and at least one GPU is visible.
bool torch_cuda_available();
// torch's current CUDA stream on the current device (a cudaStream_t), or nullptr.
void* torch_current_cuda_stream();
// Blocks until all work on the current CUDA device is done (no-op without CUDA).
void torch_cuda_synchronize();
// State of the default CUDA generator of the current device (empty without CUDA), and back
// (ignored without CUDA).
std::vector<uint8_t> torch_cuda_rng_state();
void torch_set_cuda_rng_state(const std::vector<uint8_t>& state);

// Checkpoint snapshots of GPU tensors.
// Copies a CUDA tensor's bytes (made contiguous) into host memory `dst` on a side stream that
// first waits for the current stream's work, then waits for the copy; `dst` should be pinned
// (torch_pin_host_memory) for full PCIe bandwidth. REQUIRES: `src` is a CUDA tensor (throws
// kInternal without CUDA).
void torch_copy_cuda_to_host(const at::Tensor& src, void* dst);
// Page-locks existing host memory for fast device-to-host copies (cudaHostRegister); false
// when there is no CUDA or the driver refused (the memory stays usable, just slower).
bool torch_pin_host_memory(void* ptr, size_t bytes);
void torch_unpin_host_memory(void* ptr);

}  // namespace ddp
