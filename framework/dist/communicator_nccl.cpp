// NCCL backend for CUDA tensors; built only when the libtorch found has CUDA (see cmake/Dependencies.cmake).
// Collectives are enqueued on the tensor's current CUDA stream, as libtorch's own kernels are.
#include "framework/common/error.h"
#include "framework/dist/communicator.h"
#include "framework/dist/mpi_check.h"
#include "framework/dist/mpi_handle.h"
#include "framework/dist/runtime.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <fmt/format.h>
#include <nccl.h>

namespace qforge::dist {
namespace {

[[noreturn]] void throw_nccl_error(ncclResult_t code, const char* expression, const char* file, int line) {
  const Runtime* runtime = Runtime::current();
  std::string where = runtime ? fmt::format("rank {} of {}", runtime->rank(), runtime->size()) : "rank ?";
  throw Error(fmt::format("{} failed on {}: {} ({}:{})", expression, where, ncclGetErrorString(code), file, line));
}

#define QF_NCCL_CHECK(expression)                                                           \
  do {                                                                                      \
    ncclResult_t qf_nccl_code_ = (expression);                                              \
    if (qf_nccl_code_ != ncclSuccess) throw_nccl_error(qf_nccl_code_, #expression, __FILE__, __LINE__); \
  } while (0)

ncclDataType_t nccl_type(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kHalf: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt8: return ncclInt8;
    case torch::kUInt8: return ncclUint8;
    case torch::kBool: return ncclUint8;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    default: throw Error(fmt::format("NCCL collectives do not support dtype {}", c10::toString(type)));
  }
}

ncclRedOp_t nccl_op(torch::ScalarType type, ReduceOp op) {
  if (type == torch::kBool) return op == ReduceOp::kMin ? ncclMin : ncclMax;  // or / and on 0-1 bytes
  return op == ReduceOp::kSum ? ncclSum : op == ReduceOp::kMax ? ncclMax : ncclMin;
}

class NcclBackend final : public Backend {
 public:
  NcclBackend(MPI_Comm mpi_comm, int rank, int size, int device) : device_(device) {
    ncclUniqueId id;
    if (rank == 0) QF_NCCL_CHECK(ncclGetUniqueId(&id));
    QF_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi_comm));
    c10::cuda::CUDAGuard guard(device);
    QF_NCCL_CHECK(ncclCommInitRank(&comm_, size, id, rank));
  }
  ~NcclBackend() override { ncclCommDestroy(comm_); }

  void all_reduce(torch::Tensor& buffer, ReduceOp op) override {
    QF_NCCL_CHECK(ncclAllReduce(buffer.data_ptr(), buffer.data_ptr(), buffer.numel(), nccl_type(buffer.scalar_type()),
                                nccl_op(buffer.scalar_type(), op), comm_, stream()));
  }
  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    QF_NCCL_CHECK(ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(), nccl_type(input.scalar_type()),
                                comm_, stream()));
  }
  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) override {
    QF_NCCL_CHECK(ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(),
                                    nccl_type(input.scalar_type()), nccl_op(input.scalar_type(), op), comm_,
                                    stream()));
  }
  void broadcast(torch::Tensor& buffer, int root) override {
    QF_NCCL_CHECK(ncclBroadcast(buffer.data_ptr(), buffer.data_ptr(), buffer.numel(),
                                nccl_type(buffer.scalar_type()), root, comm_, stream()));
  }
  void barrier() override {
    torch::Tensor token = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA, device_));
    all_reduce(token, ReduceOp::kSum);
    c10::cuda::getCurrentCUDAStream(device_).synchronize();
  }

 private:
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(device_).stream(); }

  int device_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Backend> make_nccl_backend(intptr_t mpi_comm, int rank, int size, int device) {
  return std::make_unique<NcclBackend>(from_handle(mpi_comm), rank, size, device);
}

}  // namespace qforge::dist
