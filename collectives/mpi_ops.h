// MPI datatypes and reduction ops for our DTypes, and the helpers every MPI collective of
// MpiCommunicator shares (internal to collectives/).
//
// 16-bit floats travel as MPI_UINT16_T with user-defined sum ops (MPI has no half type);
// ReduceOp::kAvg is a sum followed by scale_in_place.
// Thread-safety: all functions are thread-safe (the ops are created once).
#pragma once

#include <cstddef>

#include <mpi.h>

#include "collectives/dtype.h"

namespace ddp {

MPI_Datatype mpi_type(DType dtype);
// Throws ddp::Error(kInvalidArgument) for an op the dtype does not support on MPI.
MPI_Op mpi_op(DType dtype, ReduceOp op);
// Creates the 16-bit ops; REQUIRES: MPI is initialised. Called once per communicator.
void create_mpi_ops();
// Throws ddp::Error(kInvalidArgument) when op is kAvg and dtype is not floating point.
void check_avg(DType dtype, ReduceOp op);
// Divides `count` elements by `divisor` in place (the second half of ReduceOp::kAvg).
void scale_in_place(void* data, size_t count, DType dtype, int divisor);
// `count` as an MPI int; throws ddp::Error(kInvalidArgument) naming `call` when it is larger.
int checked_int(size_t count, const char* call);

}  // namespace ddp
