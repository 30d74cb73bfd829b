// GoogleTest main for tests that run under mpiexec (and as a single process). Rank 0 prints the usual report;
// other ranks print only their failures, tagged with the rank. The exit code fails when any rank failed.
#include "framework/dist/runtime.h"
#include "framework/system/system_info.h"

#include <gtest/gtest.h>
#include <mpi.h>

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.message());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  qforge::dist::Runtime runtime(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  qforge::sys::configure_threads(0, runtime.local_size());  // as qforge does: no more threads than cores
  if (runtime.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(runtime.rank()));
  }
  int result = RUN_ALL_TESTS();
  int worst = result;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (runtime.rank() == 0 && worst != 0 && result == 0)
    std::fprintf(stderr, "rank 0 passed, but another rank failed (see its [rank N] lines)\n");
  return worst;
}
