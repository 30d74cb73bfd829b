// qforge: quantize large language models on HPC clusters. Run `qforge --help`.
#include "framework/dist/runtime.h"
#include "framework/log/log.h"
#include "launch/commands.h"

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  qforge::dist::Runtime runtime(&argc, &argv);
  qforge::log::set_rank(runtime.rank(), runtime.size());
  try {
    return qforge::run_qforge(runtime, std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    // An error on one rank may leave the others waiting in a collective: end the whole job.
    std::fprintf(stderr, "qforge: error on rank %d of %d: %s\n", runtime.rank(), runtime.size(), e.what());
    std::fflush(stderr);
    if (runtime.size() > 1) runtime.abort(1);
    return 1;
  }
}
