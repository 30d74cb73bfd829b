// Collectives over torch::Tensor for one group of ranks. A Communicator picks its backend per call from the
// tensor's device: MPI for CPU tensors, NCCL for CUDA tensors, and a single-process backend when the group
// has one rank. Every call is collective: all ranks of the group make it, in the same order.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

namespace qforge::dist {

enum class ReduceOp { kSum, kMax, kMin, kAvg };
const char* to_string(ReduceOp op);

// Flat collectives on contiguous tensors; the Communicator handles shapes, dims and kAvg.
// Reductions here are kSum, kMax or kMin only.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void all_reduce(torch::Tensor& buffer, ReduceOp op) = 0;
  // output.numel() == size * input.numel(); rank r's input lands at [r * n, (r + 1) * n).
  virtual void all_gather(const torch::Tensor& input, torch::Tensor& output) = 0;
  // input.numel() == size * output.numel(); output = sum over ranks of input[rank * n, (rank + 1) * n).
  virtual void reduce_scatter(const torch::Tensor& input, torch::Tensor& output, ReduceOp op) = 0;
  virtual void broadcast(torch::Tensor& buffer, int root) = 0;
  virtual void barrier() = 0;
};

class Communicator {
 public:
  // `mpi_comm` is an MPI_Comm handle (owned by the caller), kept opaque so that this header needs no mpi.h.
  Communicator(std::string name, intptr_t mpi_comm, int rank, int size);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const std::string& name() const { return name_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place. kAvg on integer tensors rounds toward zero; bool tensors support kSum/kMax (or) and kMin (and).
  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  // Concatenation of every rank's `tensor` (same shape on all ranks) along `dim`, in rank order.
  torch::Tensor all_gather(const torch::Tensor& tensor, int64_t dim = 0);
  // Reduces `tensor` across ranks and returns this rank's part of it split in size() equal parts along `dim`.
  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum, int64_t dim = 0);
  // The same on flat contiguous buffers, into `output` (no allocation): output.numel() * size() ==
  // input.numel(); reduce_scatter_into gives rank r the reduced [r * n, (r + 1) * n), all_gather_into puts rank
  // r's input there.
  void reduce_scatter_into(const torch::Tensor& input, torch::Tensor& output, ReduceOp op = ReduceOp::kSum);
  void all_gather_into(const torch::Tensor& input, torch::Tensor& output);
  // In place: every rank receives `root`'s values.
  void broadcast(torch::Tensor& tensor, int root = 0);
  // `root`'s text on every rank (its length, then its bytes); the others' `text` is ignored.
  std::string broadcast_text(const std::string& text, int root = 0);
  void barrier();

  // Bytes this rank sends, counted as the bandwidth-optimal (ring) algorithm sends them for a group of p ranks:
  // all-reduce of N bytes 2 (p - 1) / p * N, reduce-scatter of N input bytes and all-gather of N output bytes
  // (p - 1) / p * N, broadcast N; nothing on one rank. Benchmarks compare it with the layout's formula.
  struct Traffic {
    int64_t calls = 0;
    double bytes = 0;
  };
  const Traffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_ = Traffic{}; }

 private:
  Backend& backend_for(const torch::Tensor& tensor);
  void count(double factor, const torch::Tensor& tensor);  // adds factor * (p - 1) / p * its bytes

  std::string name_;
  intptr_t mpi_comm_;
  int rank_;
  int size_;
  std::unique_ptr<Backend> host_;
  std::unique_ptr<Backend> device_;  // created on the first CUDA collective
  Traffic traffic_;
};

// Largest element count one MPI call carries; larger messages go in pieces. Default INT_MAX (MPI's count is
// an int); tests lower it to exercise the piecewise path on small tensors.
void set_mpi_max_count(int64_t elements);
int64_t mpi_max_count();

// Backend factories (communicator.cpp, communicator_nccl.cpp).
std::unique_ptr<Backend> make_self_backend();
std::unique_ptr<Backend> make_mpi_backend(intptr_t mpi_comm, int rank, int size);
std::unique_ptr<Backend> make_nccl_backend(intptr_t mpi_comm, int rank, int size, int device);
bool nccl_built();

}  // namespace qforge::dist
