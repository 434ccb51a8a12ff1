// Element types and reduction operators understood by every Communicator backend.
// Kept free of LibTorch so that collectives/ builds without it; runtime/tensor_comm.h maps
// torch scalar types onto these.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ddp {

enum class DType : uint8_t { kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8 };

enum class ReduceOp : uint8_t {
  kSum,
  kAvg,  // sum divided by world size; floating-point types only
  kMax,
  kMin,
};

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* reduce_op_name(ReduceOp op);
bool is_floating(DType dtype);

// IEEE half and bfloat16 <-> float, round-to-nearest-even. Used by the MPI backend's
// user-defined reduction for 16-bit payloads (MPI has no 16-bit float type).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

}  // namespace ddp
