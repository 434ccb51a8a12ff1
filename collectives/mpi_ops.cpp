#include "collectives/mpi_ops.h"

#include <climits>
#include <cstdint>
#include <mutex>

#include <fmt/format.h>

#include "collectives/error.h"
#include "collectives/mpi_check.h"

namespace ddp {
namespace {

template <uint16_t (*kToBits)(float), float (*kFromBits)(uint16_t)>
void sum_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = kToBits(kFromBits(a[i]) + kFromBits(b[i]));
}

struct Ops16 {
  MPI_Op half_sum = MPI_OP_NULL;
  MPI_Op bf16_sum = MPI_OP_NULL;
};

const Ops16& ops16() {
  static Ops16 ops;
  static std::once_flag once;
  std::call_once(once, [] {
    DDP_MPI_CHECK(MPI_Op_create(&sum_16bit<float_to_half, half_to_float>, 1, &ops.half_sum));
    DDP_MPI_CHECK(MPI_Op_create(&sum_16bit<float_to_bf16, bf16_to_float>, 1, &ops.bf16_sum));
  });
  return ops;
}

}  // namespace

void create_mpi_ops() { ops16(); }

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return MPI_FLOAT;
    case DType::kFloat64: return MPI_DOUBLE;
    case DType::kFloat16:
    case DType::kBFloat16: return MPI_UINT16_T;
    case DType::kInt32: return MPI_INT32_T;
    case DType::kInt64: return MPI_INT64_T;
    case DType::kUInt8: return MPI_UINT8_T;
  }
  throw Error(ErrorKind::kInternal, "unknown DType");
}

MPI_Op mpi_op(DType dtype, ReduceOp op) {
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) {
    if (op != ReduceOp::kSum && op != ReduceOp::kAvg) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("all_reduce: op '{}' is not supported for {} on the MPI backend",
                              reduce_op_name(op), dtype_name(dtype)));
    }
    return dtype == DType::kFloat16 ? ops16().half_sum : ops16().bf16_sum;
  }
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  throw Error(ErrorKind::kInternal, "unknown ReduceOp");
}

void check_avg(DType dtype, ReduceOp op) {
  if (op == ReduceOp::kAvg && !is_floating(dtype)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("all_reduce: 'avg' needs a floating-point dtype, got {}",
                            dtype_name(dtype)));
  }
}

// Divides `count` elements by `divisor` in place (the second half of ReduceOp::kAvg).
void scale_in_place(void* data, size_t count, DType dtype, int divisor) {
  if (divisor == 1) return;
  switch (dtype) {
    case DType::kFloat32: {
      auto* p = static_cast<float*>(data);
      const float inv = 1.0f / static_cast<float>(divisor);
      for (size_t i = 0; i < count; ++i) p[i] *= inv;
      return;
    }
    case DType::kFloat64: {
      auto* p = static_cast<double*>(data);
      for (size_t i = 0; i < count; ++i) p[i] /= divisor;
      return;
    }
    case DType::kFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < count; ++i) p[i] = float_to_half(half_to_float(p[i]) / divisor);
      return;
    }
    case DType::kBFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < count; ++i) p[i] = float_to_bf16(bf16_to_float(p[i]) / divisor);
      return;
    }
    default: throw Error(ErrorKind::kInternal, "scale_in_place on a non-floating dtype");
  }
}

int checked_int(size_t count, const char* call) {
  if (count > static_cast<size_t>(INT_MAX)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{}: {} elements exceed MPI's int count", call, count));
  }
  return static_cast<int>(count);
}

}  // namespace ddp
