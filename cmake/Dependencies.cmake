# Finds every third-party dependency and decides, once, whether CUDA/NCCL code paths are built.

find_package(Torch REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)
set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(FATAL_ERROR "qforge needs parallel HDF5 (Debian: libhdf5-openmpi-dev); found a serial one at ${HDF5_INCLUDE_DIRS}")
endif()
find_package(yaml-cpp REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
# PCRE2 runs GPT-2's pre-tokenizer regex (framework/tokenizer/gpt2_bpe.cpp); Debian: libpcre2-dev.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET GLOBAL libpcre2-8)

# CUDA and NCCL are on exactly when the libtorch found was built with CUDA.
set(QFORGE_WITH_CUDA OFF)
if(TORCH_CUDA_LIBRARIES OR TARGET torch_cuda)
  set(QFORGE_WITH_CUDA ON)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS $ENV{NCCL_HOME}/include ${CUDA_TOOLKIT_ROOT_DIR}/include)
  find_library(NCCL_LIBRARY nccl HINTS $ENV{NCCL_HOME}/lib ${CUDA_TOOLKIT_ROOT_DIR}/lib64)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "libtorch has CUDA but NCCL was not found (set NCCL_HOME)")
  endif()
  message(STATUS "qforge: CUDA ON, NCCL ON (libtorch ${Torch_VERSION} has CUDA; NCCL ${NCCL_LIBRARY})")
else()
  message(STATUS "qforge: CUDA OFF, NCCL OFF (libtorch ${Torch_VERSION} at ${TORCH_INSTALL_PREFIX} has no CUDA)")
endif()

# Test binaries run under mpiexec; CI runs as root and on machines with fewer cores than ranks.
set(QFORGE_MPIEXEC_FLAGS --oversubscribe)

# BLAS: libtorch runs its own OpenMP pool, and Debian's default OpenBLAS (the pthread build) a second pool of as
# many threads; with two threads per process the two fight for the cores (3-4x slower than one thread). OpenBLAS's
# OpenMP build shares libtorch's pool and runs single-threaded inside libtorch's parallel regions. Where it is
# installed (libopenblas0-openmp), every qforge executable loads it through an RPATH (DT_RPATH: it also applies
# to libtorch's own libblas.so.3), leaving the system's default BLAS alone. Measurements: docs/performance.md.
set(QFORGE_BLAS_DIR "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp" CACHE PATH
    "directory whose libblas.so.3/liblapack.so.3 qforge's executables load (empty: the system's default)")
if(QFORGE_BLAS_DIR AND EXISTS "${QFORGE_BLAS_DIR}/libblas.so.3")
  add_link_options(LINKER:--disable-new-dtags)
  list(APPEND CMAKE_BUILD_RPATH "${QFORGE_BLAS_DIR}")
  list(APPEND CMAKE_INSTALL_RPATH "${QFORGE_BLAS_DIR}")
  message(STATUS "qforge: BLAS from ${QFORGE_BLAS_DIR} (shares libtorch's OpenMP threads)")
else()
  message(STATUS "qforge: BLAS is the system's libblas.so.3 (install libopenblas0-openmp for one thread pool)")
endif()
