#pragma once
/// \file data_parallel_gradients.hpp
/// \brief Data-parallel training with any kfopt optimizer that reads gradients from a
/// ParameterSet (Sgd, Adam(W), RmsProp, FilterRmsProp, FilterAdam, ...), without changing it:
/// before each step, every registered gradient is averaged across the ranks in ONE fused
/// MPI_Allreduce and written back into the caller's gradient storage, and the ranks agree on
/// finiteness in the same message.
///
/// \code
///   kfopt::mpi::Communicator comm;                 // MPI_COMM_WORLD
///   kfopt::ParameterSet<double> params;
///   params.add("W", W, dW);
///   params.add("b", b, db);
///   kfopt::Adam<double> adam(params, options);     // the optimizer is not changed
///   kfopt::mpi::DataParallelGradients<double> sync(params, comm);
///   for (...) {
///     gradients_of_local_mean_loss(W, b, local_batch, dW, db);   // this rank's data only
///     sync.average();               // dW, db ← mean over the ranks (identical on every rank)
///     adam.step();                  // identical step on every rank
///   }
/// \endcode
///
/// **What is averaged.** Each rank computes the gradient of its *mean* loss over its local
/// batch, g_r = (1/b_r) Σ_{i ∈ batch_r} ∇ℓ_i. `average()` replaces it by (1/P) Σ_r g_r. With
/// equal local batch sizes b_r = B/P this is exactly the gradient of the mean loss over the
/// global batch of B examples, so P ranks reproduce one process on the whole batch (up to the
/// rounding of the sum order). With unequal local batches, call
/// `average_weighted(b_r)`: the result is Σ_r b_r g_r / Σ_r b_r, the global-batch mean again
/// (a rank with b_r = 0 contributes nothing, whatever its gradient holds).
///
/// **Non-finite gradients: all or nothing.** Every rank sends, with its gradients, a flag
/// "my gradient holds NaN/Inf". If any rank raised it (or the sum itself overflowed), every
/// rank's registered gradients are set to NaN and Status::NonFiniteInput is returned on every
/// rank; the optimizer's own guard then refuses the step identically on every rank (nothing
/// written, `skipped_nonfinite` counted), so parameters and optimizer state stay identical
/// across ranks. `nonfinite_ranks()` tells how many ranks raised the flag.
///
/// **Cost per call** (see cost_model.hpp): one MPI_Allreduce of N + 3 scalars, N = the total
/// number of parameters (the 3 extra: the local weight, the non-finite flag and the invalid-
/// weight flag), i.e. 2(P−1)/P·(N+3)·sizeof(Scalar) bytes sent per rank by a ring all-reduce;
/// O(N) to pack and unpack. One persistent buffer of N + 3 scalars, allocated at construction:
/// no allocation per call (unless blocks are added to the set later).
///
/// **Storage.** The gradients are written back through the registered gradient storage, so it
/// must be writable memory of the caller (an Eigen matrix or vector, a Map of a writable
/// buffer), even though ParameterSet registers it as read-only for the optimizers.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/mpi/communicator.hpp"

namespace kfopt {
namespace mpi {

/// Averages a ParameterSet's gradients across the ranks of a Communicator before each
/// optimizer step (see the file comment).
template <typename Scalar>
class DataParallelGradients {
 public:
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Keeps pointers to `params` and `comm` (both must outlive this object). Every rank must
  /// register the same blocks in the same order.
  DataParallelGradients(ParameterSet<Scalar>& params, Communicator& comm)
      : params_(&params), comm_(&comm) {
    buffer_.resize(message_size());
  }

  /// Gradients ← mean over the ranks of each rank's gradient (equal local batch sizes).
  /// Returns Status::Success, or Status::NonFiniteInput on every rank when any rank's
  /// gradient (or the sum) is non-finite; the gradients then hold NaN on every rank.
  Status average() { return reduce(1.0, "kfopt::mpi::DataParallelGradients::average"); }

  /// Gradients ← Σ_r w_r g_r / Σ_r w_r with w_r = this rank's `local_weight` (its local batch
  /// size b_r when g_r is the gradient of the local mean loss). Same statuses as average().
  /// Throws InvalidInputError on every rank if some rank passed a negative or non-finite
  /// weight, or if all weights are zero (gradients left unchanged).
  Status average_weighted(double local_weight) {
    return reduce(local_weight, "kfopt::mpi::DataParallelGradients::average_weighted");
  }

  /// Scalars sent per call: N + 3.
  Eigen::Index message_size() const { return params_->total_size() + 3; }
  /// Ranks whose gradient was non-finite at the last call.
  int nonfinite_ranks() const noexcept { return nonfinite_ranks_; }
  /// Σ_r w_r at the last call (P for average()).
  double total_weight() const noexcept { return total_weight_; }
  /// The communicator the gradients are averaged over.
  const Communicator& communicator() const noexcept { return *comm_; }

 private:
  Status reduce(double local_weight, const char* operation) {
    for (const auto& block : *params_) block.check_storage();
    const Eigen::Index n = params_->total_size();
    if (buffer_.size() != n + 3) buffer_.resize(n + 3);

    const bool weight_valid = std::isfinite(local_weight) && local_weight >= 0.0;
    const bool contributes = weight_valid && local_weight > 0.0;
    const bool local_finite = !contributes || params_->gradients_finite();
    const Scalar w = contributes && local_finite ? static_cast<Scalar>(local_weight) : Scalar(0);

    Eigen::Index offset = 0;
    for (const auto& block : *params_) {
      auto segment = buffer_.segment(offset, block.size());
      const auto g = block.gradient();
      if (w != Scalar(0)) {
        segment = w * Eigen::Map<const Vector>(g.data(), block.size());
      } else {
        segment.setZero();
      }
      offset += block.size();
    }
    buffer_(n) = w;
    buffer_(n + 1) = local_finite ? Scalar(0) : Scalar(1);
    buffer_(n + 2) = weight_valid ? Scalar(0) : Scalar(1);

    comm_->allreduce_sum(buffer_);

    const Scalar total = buffer_(n);
    const auto invalid = static_cast<int>(std::lround(static_cast<double>(buffer_(n + 2))));
    nonfinite_ranks_ = static_cast<int>(std::lround(static_cast<double>(buffer_(n + 1))));
    total_weight_ = static_cast<double>(total);
    if (invalid > 0) {
      throw InvalidInputError(std::string(operation) + ": " + std::to_string(invalid) +
                              " rank(s) passed a negative or non-finite local weight (rank " +
                              std::to_string(comm_->rank()) + " passed " +
                              std::to_string(local_weight) + ")");
    }
    if (nonfinite_ranks_ > 0 || !buffer_.head(n).allFinite()) {
      for (const auto& block : *params_) writable_gradient(block).setConstant(
          std::numeric_limits<Scalar>::quiet_NaN());
      return Status::NonFiniteInput;
    }
    if (!(total > Scalar(0))) {
      throw InvalidInputError(std::string(operation) +
                              ": the local weights sum to zero over all ranks (no rank has "
                              "examples); gradients left unchanged");
    }
    offset = 0;
    for (const auto& block : *params_) {
      auto g = writable_gradient(block);
      g = buffer_.segment(offset, block.size()) / total;
      offset += block.size();
    }
    return Status::Success;
  }

  /// The registered gradient storage, writable (it is the caller's, see the file comment).
  static Eigen::Map<Vector> writable_gradient(const ParameterBlock<Scalar>& block) {
    return Eigen::Map<Vector>(const_cast<Scalar*>(block.gradient().data()), block.size());
  }

  ParameterSet<Scalar>* params_;
  Communicator* comm_;
  Vector buffer_;
  int nonfinite_ranks_ = 0;
  double total_weight_ = 0.0;
};

}  // namespace mpi
}  // namespace kfopt
