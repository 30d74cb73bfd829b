// The process's place in the job: MPI start-up and shutdown, world and node-local ranks, and the TP x DP grid.
#pragma once

#include "framework/dist/communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace qforge::dist {

// Owns MPI: initialises it in the constructor (as a one-rank job when the program was not started by a
// launcher) and finalises it in the destructor. One per process; create it first, destroy it last.
class Runtime {
 public:
  Runtime(int* argc, char*** argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  int local_size() const { return local_size_; }
  int node_index() const { return node_index_; }  // 0 .. node_count()-1, numbered by lowest world rank
  int node_count() const { return node_count_; }
  const std::string& host_name() const { return host_name_; }
  // Ranks on each node, indexed by node_index.
  const std::vector<int>& ranks_per_node() const { return ranks_per_node_; }

  Communicator& world() { return *world_; }
  // A group of this process alone (unsharded reference computations, single-rank work inside a job).
  Communicator& self() { return *self_; }

  // The running Runtime, or nullptr before it exists / after it is gone.
  static Runtime* current();

  // Ends every process of the job with `code`; for errors on one rank that would leave the others waiting.
  [[noreturn]] void abort(int code);

  // Called by a rank that failed: waits up to `timeout_s` for every rank to call it too (on a communicator of
  // its own, so it never matches other traffic). Returns the lowest rank when all did — the error was shared
  // and one rank can report it — or -1 when some rank did not, and the job must be aborted.
  int agree_on_failure(double timeout_s);

 private:
  void discover_nodes();

  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int node_index_ = 0;
  int node_count_ = 1;
  std::string host_name_;
  std::vector<int> ranks_per_node_;
  intptr_t node_comm_ = 0;
  intptr_t failure_comm_ = 0;
  std::unique_ptr<Communicator> world_;
  std::unique_ptr<Communicator> self_;
};

// Tensor parallelism x data parallelism. `tp` consecutive world ranks form a TP group (so with block rank
// placement a TP group stays inside a node); ranks with the same TP rank form a DP group.
class Grid {
 public:
  // Collective over the world. Throws UsageError when the world size is not a multiple of `tp`.
  Grid(Runtime& runtime, int tp);
  ~Grid();
  Grid(const Grid&) = delete;
  Grid& operator=(const Grid&) = delete;

  int tp() const { return tp_; }
  int dp() const { return dp_; }
  int tp_rank() const { return tp_group_->rank(); }
  int dp_rank() const { return dp_group_->rank(); }
  Communicator& tp_group() { return *tp_group_; }
  Communicator& dp_group() { return *dp_group_; }
  Communicator& world() { return runtime_.world(); }
  // True when every TP group has all its ranks on one node.
  bool tp_groups_within_nodes() const { return tp_within_nodes_; }
  // "TP 2 x DP 2"
  std::string describe() const;

 private:
  Runtime& runtime_;
  int tp_;
  int dp_;
  intptr_t tp_comm_ = 0;
  intptr_t dp_comm_ = 0;
  std::unique_ptr<Communicator> tp_group_;
  std::unique_ptr<Communicator> dp_group_;
  bool tp_within_nodes_ = true;
};

// Rank and size as the launcher's environment tells them (Open MPI, PMIx, PMI, Slurm), for tagging log lines
// before MPI is up; {0, 1} when there is no launcher.
struct LaunchEnv {
  int rank = 0;
  int size = 1;
};
LaunchEnv launch_env_from_environment();

}  // namespace qforge::dist
