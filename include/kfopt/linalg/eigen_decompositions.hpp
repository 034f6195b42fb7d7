#pragma once
/// \file eigen_decompositions.hpp
/// \brief Eigen decompositions that are safe to keep as members: their status fields are
/// initialized from construction.
///
/// Eigen 3.4's `LLT` (default and size constructors) and `SelfAdjointEigenSolver` (size
/// constructor) leave `info` (and LLT's cached l1 norm) uninitialized until the first
/// `compute`. Copying or moving such an object — a layer stored in a `std::vector` or a
/// `std::variant`, a checkpoint — reads those fields: undefined behaviour that UBSan can
/// flag and that GCC 12 reports at -O3 as -Wmaybe-uninitialized. A kfopt class that keeps a
/// decomposition as a reusable workspace holds one of these instead. They are the Eigen
/// classes in every other respect (a reference to the Eigen base binds to them).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>

namespace kfopt {
namespace detail {

/// `Eigen::LLT<Matrix>` with `info() == InvalidInput` until the first compute.
template <typename Matrix>
class InitializedLlt : public Eigen::LLT<Matrix> {
  using Base = Eigen::LLT<Matrix>;

 public:
  InitializedLlt() { reset_status(); }
  /// Preallocates for n×n matrices.
  explicit InitializedLlt(Eigen::Index n) : Base(n) { reset_status(); }

 private:
  void reset_status() {
    this->m_l1_norm = 0;
    this->m_info = Eigen::InvalidInput;
  }
};

/// `Eigen::SelfAdjointEigenSolver<Matrix>` with `info() == InvalidInput` until the first
/// compute, also when preallocated.
template <typename Matrix>
class InitializedEigenSolver : public Eigen::SelfAdjointEigenSolver<Matrix> {
  using Base = Eigen::SelfAdjointEigenSolver<Matrix>;

 public:
  InitializedEigenSolver() = default;
  /// Preallocates for n×n matrices.
  explicit InitializedEigenSolver(Eigen::Index n) : Base(n) { this->m_info = Eigen::InvalidInput; }
};

}  // namespace detail
}  // namespace kfopt
