// MPI_Comm <-> the opaque handle public headers carry (MPI_Comm is a pointer in Open MPI, an int in MPICH).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstring>

namespace qforge::dist {

static_assert(sizeof(MPI_Comm) <= sizeof(intptr_t), "an MPI_Comm must fit in an intptr_t");

inline intptr_t to_handle(MPI_Comm comm) {
  intptr_t handle = 0;
  std::memcpy(&handle, &comm, sizeof comm);
  return handle;
}

inline MPI_Comm from_handle(intptr_t handle) {
  MPI_Comm comm;
  std::memcpy(&comm, &handle, sizeof comm);
  return comm;
}

}  // namespace qforge::dist
