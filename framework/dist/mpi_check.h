// QF_MPI_CHECK(MPI_Xxx(...)): throws qforge::Error naming the call, the world rank and MPI's own message.
// Communicators use MPI_ERRORS_RETURN, so failures come back here instead of aborting the job silently.
#pragma once

#include <mpi.h>

#include <string>

namespace qforge::dist {
[[noreturn]] void throw_mpi_error(int code, const char* expression, const char* file, int line);
}  // namespace qforge::dist

#define QF_MPI_CHECK(expression)                                                         \
  do {                                                                                   \
    int qf_mpi_code_ = (expression);                                                     \
    if (qf_mpi_code_ != MPI_SUCCESS)                                                     \
      ::qforge::dist::throw_mpi_error(qf_mpi_code_, #expression, __FILE__, __LINE__);    \
  } while (0)
