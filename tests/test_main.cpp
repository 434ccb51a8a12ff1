// GoogleTest main for every test binary: MPI up (singleton without mpirun), quiet non-zero
// ranks, and a non-zero exit on any rank's failure (mpirun then fails the ctest case).
#include <gtest/gtest.h>

#include "collectives/mpi_communicator.h"
#include "tests/test_util.h"

int main(int argc, char** argv) {
  ddp::MpiRuntime mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    // Keep failures visible on every rank, drop the progress chatter.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    struct FailurePrinter : ::testing::EmptyTestEventListener {
      int rank;
      explicit FailurePrinter(int r) : rank(r) {}
      void OnTestPartResult(const ::testing::TestPartResult& r) override {
        if (r.failed()) {
          std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, r.file_name() ? r.file_name() : "?",
                       r.line_number(), r.summary());
        }
      }
    };
    listeners.Append(new FailurePrinter(rank));
  }
  ddp::test::world();  // create before tests so every rank constructs it at the same point
  int rc = RUN_ALL_TESTS();
  // A failure on any rank fails the whole run.
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  ddp::test::world().barrier();
  return worst;
}
