#pragma once
/// \file cluster.hpp
/// \brief The processes an example runs on: one (the default), or every rank of an MPI job
/// (`--distributed`, in a build with the kfopt::mpi target: KFOPT_EXAMPLE_MPI).
///
/// A distributed run is data-parallel: every rank holds the whole model and the same
/// optimizer state, takes its contiguous share of each global mini-batch (slice()), and the
/// optimizers average the gradients and K-FAC's statistics across the ranks
/// (kfopt::mpi::DataParallelGradients, kfopt::mpi::DistributedKfac) on optimizer_comm().
/// The example's own reductions (the mini-batch loss, the test metric) go through a second
/// communicator, so that optimizer_comm().traffic() counts the optimizers' messages only.
/// Rank 0 prints and writes files; progress_stream() is null on the other ranks.
///
/// This is example code, not part of the kfopt library: kfopt never includes it.

#include <algorithm>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(KFOPT_EXAMPLE_MPI)
#include <mpi.h>

#include <Eigen/Core>
#include <kfopt/mpi/communicator.hpp>
#if defined(KFOPT_EXAMPLE_CHECKPOINTS)
#include <kfopt/mpi/distributed_checkpoint.hpp>
#endif
#endif
#if defined(KFOPT_EXAMPLE_CHECKPOINTS)
#include <kfopt/io/checkpoint.hpp>
#endif

namespace kfopt_examples {

/// Whether this build can run on several processes.
inline constexpr bool cluster_available =
#if defined(KFOPT_EXAMPLE_MPI)
    true;
#else
    false;
#endif

/// One process, or the ranks of MPI_COMM_WORLD (see the file comment).
class Cluster {
 public:
  /// One process, no MPI.
  Cluster() = default;

#if defined(KFOPT_EXAMPLE_MPI)
  /// Every rank of MPI_COMM_WORLD; MPI must be initialized (MpiSession).
  static Cluster world() {
    Cluster c;
    c.optimizer_comm_ = std::make_unique<kfopt::mpi::Communicator>();
    c.loop_comm_ = std::make_unique<kfopt::mpi::Communicator>();
    c.rank_ = c.loop_comm_->rank();
    c.size_ = c.loop_comm_->size();
    return c;
  }
  /// The communicator the optimizers use (its traffic() counts their messages only).
  kfopt::mpi::Communicator& optimizer_comm() { return *optimizer_comm_; }
#endif

  /// Whether this run uses MPI (even on one rank).
  bool distributed() const noexcept { return loop_comm_ != nullptr; }
  /// This process's rank, 0 on one process.
  int rank() const noexcept { return rank_; }
  /// Number of ranks P (1 on one process).
  int size() const noexcept { return size_; }
  /// Whether this process prints and writes files.
  bool root() const noexcept { return rank_ == 0; }
  /// Where progress goes: stderr on rank 0, nowhere on the others.
  std::FILE* progress_stream() const noexcept { return root() ? stderr : nullptr; }

  /// This rank's share [first, first + count) of n items: contiguous, in rank order, the
  /// sizes differing by at most one (the first n mod P ranks take one more).
  std::pair<long, long> slice(long n) const noexcept {
    const long base = n / size_, extra = n % size_;
    const long count = base + (rank_ < extra ? 1 : 0);
    const long first = rank_ * base + std::min<long>(rank_, extra);
    return {first, count};
  }

  /// Σ over the ranks of `local` (itself on one process), identical on every rank.
  double sum(double local) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (loop_comm_) {
      Eigen::Matrix<double, 1, 1> v;
      v(0) = local;
      loop_comm_->allreduce_sum(v);
      return v(0);
    }
#endif
    return local;
  }

  /// Rank 0's `value` on every rank (itself on one process): for what must be the same in
  /// a checkpoint, such as the training time, which each rank measures itself.
  double from_root(double value) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (loop_comm_) {
      Eigen::Matrix<double, 1, 1> v;
      v(0) = value;
      loop_comm_->broadcast(v, 0);
      return v(0);
    }
#endif
    return value;
  }

#if defined(KFOPT_EXAMPLE_CHECKPOINTS)
  /// Saves a checkpoint: on one process directly; distributed, from rank 0 after checking
  /// that every rank holds the same state (kfopt::mpi::save_checkpoint).
  void save(const std::string& path, const kfopt::Checkpoint& ck) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (loop_comm_) {
      kfopt::mpi::save_checkpoint(*loop_comm_, path, ck);
      return;
    }
#endif
    kfopt::save_checkpoint(path, ck);
  }
  /// Loads a checkpoint: distributed, rank 0 reads the file and sends it to every rank
  /// (kfopt::mpi::load_checkpoint); the ranks need not share a file system.
  kfopt::Checkpoint load(const std::string& path) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (loop_comm_) return kfopt::mpi::load_checkpoint(*loop_comm_, path);
#endif
    return kfopt::load_checkpoint(path);
  }
#endif

 private:
  int rank_ = 0;
  int size_ = 1;
#if defined(KFOPT_EXAMPLE_MPI)
  std::unique_ptr<kfopt::mpi::Communicator> optimizer_comm_, loop_comm_;
#else
  std::unique_ptr<int> loop_comm_;  // never set: one process
#endif
};

#if defined(KFOPT_EXAMPLE_MPI)
/// MPI_Init on construction, MPI_Finalize on destruction; run() turns an exception on any
/// rank into a message and MPI_Abort of the whole job (the other ranks would otherwise wait
/// in their next collective forever).
class MpiSession {
 public:
  MpiSession() {
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      throw std::runtime_error("MPI_Init_thread failed");
    }
  }
  ~MpiSession() { MPI_Finalize(); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  template <typename Body>
  int run(const char* program, Body&& body) {
    try {
      return body();
    } catch (const std::exception& e) {
      int rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::fprintf(stderr, "%s: rank %d: %s\n", program, rank, e.what());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
      return 1;
    }
  }
};
#endif

}  // namespace kfopt_examples
