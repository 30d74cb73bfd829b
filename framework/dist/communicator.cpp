#include "framework/dist/communicator.h"

#include "framework/common/error.h"
#include "framework/dist/mpi_check.h"
#include "framework/dist/mpi_handle.h"
#include "framework/dist/runtime.h"

#include <fmt/format.h>

#include <climits>
#include <cstring>

namespace qforge::dist {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

void throw_mpi_error(int code, const char* expression, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "error code %d", code);
  const Runtime* runtime = Runtime::current();
  std::string where = runtime ? fmt::format("rank {} of {}", runtime->rank(), runtime->size()) : "rank ?";
  throw Error(fmt::format("{} failed on {}: {} ({}:{})", expression, where, text, file, line));
}

namespace {

int64_t g_mpi_max_count = INT_MAX;

// ---- single process -------------------------------------------------------------------------------------

class SelfBackend final : public Backend {
 public:
  void all_reduce(torch::Tensor&, ReduceOp) override {}
  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    output.copy_(input.view(output.sizes()));
  }
  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp) override {
    output.copy_(input.view(output.sizes()));
  }
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
};

// ---- MPI ------------------------------------------------------------------------------------------------

// MPI has no 16-bit float types: they travel as 2-byte opaque types with user-defined reductions.
template <typename T>
void reduce_16bit(const void* in, void* inout, int count, ReduceOp op) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < count; ++i) {
    float x = static_cast<float>(a[i]);
    float y = static_cast<float>(b[i]);
    float r = op == ReduceOp::kSum ? x + y : op == ReduceOp::kMax ? std::max(x, y) : std::min(x, y);
    b[i] = static_cast<T>(r);
  }
}

struct Mpi16BitTypes {
  MPI_Datatype half = MPI_DATATYPE_NULL;
  MPI_Datatype bfloat16 = MPI_DATATYPE_NULL;
  MPI_Op sum = MPI_OP_NULL, max = MPI_OP_NULL, min = MPI_OP_NULL;
};
Mpi16BitTypes& mpi_16bit_types();

template <ReduceOp kOp>
void reduce_16bit_fn(void* in, void* inout, int* count, MPI_Datatype* type) {
  if (*type == mpi_16bit_types().half) reduce_16bit<c10::Half>(in, inout, *count, kOp);
  else reduce_16bit<c10::BFloat16>(in, inout, *count, kOp);
}

Mpi16BitTypes& mpi_16bit_types() {
  static Mpi16BitTypes types = [] {
    Mpi16BitTypes t;
    QF_MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &t.half));
    QF_MPI_CHECK(MPI_Type_commit(&t.half));
    QF_MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &t.bfloat16));
    QF_MPI_CHECK(MPI_Type_commit(&t.bfloat16));
    QF_MPI_CHECK(MPI_Op_create(&reduce_16bit_fn<ReduceOp::kSum>, 1, &t.sum));
    QF_MPI_CHECK(MPI_Op_create(&reduce_16bit_fn<ReduceOp::kMax>, 1, &t.max));
    QF_MPI_CHECK(MPI_Op_create(&reduce_16bit_fn<ReduceOp::kMin>, 1, &t.min));
    return t;
  }();
  return types;
}

MPI_Datatype mpi_type(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat: return MPI_FLOAT;
    case torch::kDouble: return MPI_DOUBLE;
    case torch::kHalf: return mpi_16bit_types().half;
    case torch::kBFloat16: return mpi_16bit_types().bfloat16;
    case torch::kInt8: return MPI_INT8_T;
    case torch::kUInt8: return MPI_UINT8_T;
    case torch::kInt16: return MPI_INT16_T;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kBool: return MPI_C_BOOL;
    default: throw Error(fmt::format("MPI collectives do not support dtype {}", c10::toString(type)));
  }
}

MPI_Op mpi_op(torch::ScalarType type, ReduceOp op) {
  if (type == torch::kHalf || type == torch::kBFloat16) {
    const Mpi16BitTypes& t = mpi_16bit_types();
    return op == ReduceOp::kSum ? t.sum : op == ReduceOp::kMax ? t.max : t.min;
  }
  if (type == torch::kBool) return op == ReduceOp::kMin ? MPI_LAND : MPI_LOR;
  return op == ReduceOp::kSum ? MPI_SUM : op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
}

char* bytes(const torch::Tensor& t) { return static_cast<char*>(t.data_ptr()); }

class MpiBackend final : public Backend {
 public:
  MpiBackend(MPI_Comm comm, int size) : comm_(comm), size_(size) {}

  void all_reduce(torch::Tensor& buffer, ReduceOp op) override {
    const MPI_Datatype type = mpi_type(buffer.scalar_type());
    const MPI_Op reduce = mpi_op(buffer.scalar_type(), op);
    for_each_piece(buffer.numel(), buffer.element_size(), [&](int64_t offset_bytes, int count) {
      QF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, bytes(buffer) + offset_bytes, count, type, reduce, comm_));
    });
  }

  void all_gather(const torch::Tensor& input, torch::Tensor& output) override {
    const MPI_Datatype type = mpi_type(input.scalar_type());
    const int64_t n = input.numel();
    if (n <= g_mpi_max_count) {
      QF_MPI_CHECK(MPI_Allgather(bytes(input), static_cast<int>(n), type, bytes(output), static_cast<int>(n),
                                 type, comm_));
      return;
    }
    torch::Tensor rows = output.view({size_, n});
    for_each_element_piece(n, [&](int64_t offset, int count) {
      torch::Tensor gathered = torch::empty({size_, count}, input.options());
      QF_MPI_CHECK(MPI_Allgather(bytes(input) + offset * input.element_size(), count, type, bytes(gathered),
                                 count, type, comm_));
      rows.narrow(1, offset, count).copy_(gathered);
    });
  }

  void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) override {
    const MPI_Datatype type = mpi_type(input.scalar_type());
    const MPI_Op reduce = mpi_op(input.scalar_type(), op);
    const int64_t n = output.numel();
    if (n <= g_mpi_max_count) {
      QF_MPI_CHECK(MPI_Reduce_scatter_block(bytes(input), bytes(output), static_cast<int>(n), type, reduce, comm_));
      return;
    }
    torch::Tensor rows = input.view({size_, n});
    for_each_element_piece(n, [&](int64_t offset, int count) {
      torch::Tensor piece = rows.narrow(1, offset, count).contiguous();
      QF_MPI_CHECK(MPI_Reduce_scatter_block(bytes(piece), bytes(output) + offset * output.element_size(), count,
                                            type, reduce, comm_));
    });
  }

  void broadcast(torch::Tensor& buffer, int root) override {
    const MPI_Datatype type = mpi_type(buffer.scalar_type());
    for_each_piece(buffer.numel(), buffer.element_size(), [&](int64_t offset_bytes, int count) {
      QF_MPI_CHECK(MPI_Bcast(bytes(buffer) + offset_bytes, count, type, root, comm_));
    });
  }

  void barrier() override { QF_MPI_CHECK(MPI_Barrier(comm_)); }

 private:
  template <typename Fn>
  static void for_each_element_piece(int64_t total, Fn&& fn) {
    for (int64_t offset = 0; offset < total; offset += g_mpi_max_count)
      fn(offset, static_cast<int>(std::min(g_mpi_max_count, total - offset)));
  }
  template <typename Fn>
  static void for_each_piece(int64_t total, int64_t element_size, Fn&& fn) {
    if (total == 0) return;
    for_each_element_piece(total, [&](int64_t offset, int count) { fn(offset * element_size, count); });
  }

  MPI_Comm comm_;
  int size_;
};

void check_reducible(const torch::Tensor& tensor, ReduceOp op, const std::string& group) {
  if (tensor.scalar_type() == torch::kBool && op == ReduceOp::kAvg)
    throw Error(fmt::format("all_reduce avg on group '{}': a bool tensor has no average", group));
}

// Backends reduce sum/max/min; an average is a sum divided afterwards.
ReduceOp backend_op(ReduceOp op) { return op == ReduceOp::kAvg ? ReduceOp::kSum : op; }

void divide_sum_into_average(torch::Tensor& sum, int size) {
  if (torch::isFloatingType(sum.scalar_type())) sum.div_(size);
  else sum.div_(size, "trunc");
}

}  // namespace

void set_mpi_max_count(int64_t elements) {
  QF_CHECK(elements >= 1 && elements <= INT_MAX, "MPI message piece size must be in [1, INT_MAX]");
  g_mpi_max_count = elements;
}
int64_t mpi_max_count() { return g_mpi_max_count; }

std::unique_ptr<Backend> make_self_backend() { return std::make_unique<SelfBackend>(); }

std::unique_ptr<Backend> make_mpi_backend(intptr_t mpi_comm, int rank, int size) {
  return std::make_unique<MpiBackend>(from_handle(mpi_comm), size);
}

#ifndef QFORGE_WITH_NCCL
bool nccl_built() { return false; }
std::unique_ptr<Backend> make_nccl_backend(intptr_t, int, int, int) {
  throw Error("a CUDA tensor reached a collective, but this qforge was built against a libtorch without CUDA");
}
#endif

// ---- Communicator -----------------------------------------------------------------------------------------

Communicator::Communicator(std::string name, intptr_t mpi_comm, int rank, int size)
    : name_(std::move(name)), mpi_comm_(mpi_comm), rank_(rank), size_(size) {
  host_ = size == 1 ? make_self_backend() : make_mpi_backend(mpi_comm, rank, size);
}

Communicator::~Communicator() = default;

Backend& Communicator::backend_for(const torch::Tensor& tensor) {
  if (!tensor.is_cuda() || size_ == 1) return *host_;
  if (!device_) device_ = make_nccl_backend(mpi_comm_, rank_, size_, tensor.get_device());
  return *device_;
}

void Communicator::count(double factor, const torch::Tensor& tensor) {
  if (size_ == 1) return;
  ++traffic_.calls;
  traffic_.bytes += factor * static_cast<double>(size_ - 1) / size_ * static_cast<double>(tensor.nbytes());
}

void Communicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  check_reducible(tensor, op, name_);
  if (size_ == 1) return;  // the sum, max, min or average over one rank is the tensor itself
  count(2, tensor);
  torch::Tensor buffer = tensor.contiguous();
  backend_for(buffer).all_reduce(buffer, backend_op(op));
  if (op == ReduceOp::kAvg) divide_sum_into_average(buffer, size_);
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);
}

torch::Tensor Communicator::all_gather(const torch::Tensor& tensor, int64_t dim) {
  torch::Tensor input = tensor.contiguous();
  count(size_, input);
  std::vector<int64_t> stacked_shape{size_};
  for (int64_t s : input.sizes()) stacked_shape.push_back(s);
  torch::Tensor stacked = torch::empty(stacked_shape, input.options());
  backend_for(input).all_gather(input, stacked);
  if (input.dim() == 0) return stacked;
  dim = c10::maybe_wrap_dim(dim, input.dim());
  std::vector<int64_t> shape = input.sizes().vec();
  shape[dim] *= size_;
  if (dim == 0) return stacked.view(shape);  // rank-major is already the concatenation: no second copy
  return stacked.movedim(0, dim).reshape(shape);
}

torch::Tensor Communicator::reduce_scatter(const torch::Tensor& tensor, ReduceOp op, int64_t dim) {
  check_reducible(tensor, op, name_);
  QF_CHECK(tensor.dim() > 0, fmt::format("reduce_scatter on group '{}': a scalar cannot be split", name_));
  dim = c10::maybe_wrap_dim(dim, tensor.dim());
  const int64_t extent = tensor.size(dim);
  QF_CHECK(extent % size_ == 0, fmt::format("reduce_scatter on group '{}': dim {} has size {}, not a multiple "
                                            "of the group size {}", name_, dim, extent, size_));
  // Rank r's part first in memory: [size, ...part shape]; along dim 0 a contiguous tensor already is.
  std::vector<int64_t> stacked{size_, extent / size_};
  for (int64_t d = 1; d < tensor.dim(); ++d) stacked.push_back(tensor.size(d));
  torch::Tensor input =
      dim == 0 ? tensor.contiguous().view(stacked) : torch::stack(tensor.chunk(size_, dim), 0).contiguous();
  count(1, input);
  torch::Tensor output = torch::empty(input.sizes().slice(1), input.options());
  backend_for(input).reduce_scatter(input, output, backend_op(op));
  if (op == ReduceOp::kAvg) divide_sum_into_average(output, size_);
  return output;
}

void Communicator::reduce_scatter_into(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) {
  check_reducible(input, op, name_);
  QF_CHECK(input.is_contiguous() && output.is_contiguous() && input.numel() == output.numel() * size_,
           fmt::format("reduce_scatter_into on group '{}': {} contiguous values in, {} out", name_, input.numel(),
                       output.numel()));
  count(1, input);
  backend_for(input).reduce_scatter(input, output, backend_op(op));
  if (op == ReduceOp::kAvg) divide_sum_into_average(output, size_);
}

void Communicator::all_gather_into(const torch::Tensor& input, torch::Tensor& output) {
  QF_CHECK(input.is_contiguous() && output.is_contiguous() && output.numel() == input.numel() * size_,
           fmt::format("all_gather_into on group '{}': {} contiguous values in, {} out", name_, input.numel(),
                       output.numel()));
  count(1, output);
  backend_for(input).all_gather(input, output);
}

std::string Communicator::broadcast_text(const std::string& text, int root) {
  torch::Tensor length = torch::tensor({static_cast<int64_t>(text.size())}, torch::kLong);
  broadcast(length, root);
  torch::Tensor bytes = torch::zeros({length.item<int64_t>()}, torch::kUInt8);
  if (rank_ == root && !text.empty()) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  broadcast(bytes, root);
  return std::string(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
}

void Communicator::broadcast(torch::Tensor& tensor, int root) {
  QF_CHECK(root >= 0 && root < size_,
           fmt::format("broadcast on group '{}': root {} is not a rank of a group of {}", name_, root, size_));
  if (size_ > 1) {
    ++traffic_.calls;
    traffic_.bytes += static_cast<double>(tensor.nbytes());
  }
  torch::Tensor buffer = tensor.contiguous();
  backend_for(buffer).broadcast(buffer, root);
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);
}

void Communicator::barrier() { host_->barrier(); }

}  // namespace qforge::dist
