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
