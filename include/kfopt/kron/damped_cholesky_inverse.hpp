#pragma once
/// \file damped_cholesky_inverse.hpp
/// \brief `(A + λI)⁻¹` for one fixed λ by Cholesky: the cheap path when the damping does not
/// change between inverse refreshes.
///
/// Use SymmetricEigenCache instead when λ changes often (adaptive damping) or when an inverse
/// root is needed: a new λ there costs no factorization. Cost here: `compute` is one
/// Cholesky factorization (n³/3 flops) plus, if the explicit inverse is asked for, a
/// triangular inversion and a symmetric product (another 2n³/3 flops, as LAPACK's
/// potrf + potri); `solve` on an n×k block is two triangular solves (2n²k flops).

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Cholesky factorization of `A + λI` for symmetric positive semi-definite A and λ ≥ 0.
///
/// A failed factorization (the damped matrix is not numerically positive definite) or a
/// non-finite A leaves the previous factorization in place and is reported by `info()`.
template <typename Scalar>
class DampedCholeskyInverse {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  DampedCholeskyInverse() = default;

  /// Preallocates for n×n factors.
  explicit DampedCholeskyInverse(Eigen::Index n)
      : llt_{Eigen::LLT<Matrix>(n), Eigen::LLT<Matrix>(n)}, shifted_(n, n), inverse_(n, n) {}

  /// Factorizes `A + damping·I`. Throws ShapeError / InvalidInputError for a non-square or
  /// non-symmetric A, or a negative damping.
  DampedCholeskyInverse& compute(const Eigen::Ref<const Matrix>& A, Scalar damping) {
    constexpr const char* op = "kfopt::DampedCholeskyInverse::compute";
    detail::require_nonnegative(op, "damping", damping);
    const Status input = detail::check_symmetric_factor(op, "A", A);
    if (input != Status::Success) {
      last_status_ = input;
      return *this;
    }
    shifted_ = A;
    shifted_.diagonal().array() += damping;
    // Factorize into the spare slot so that a failure keeps the current factorization.
    Eigen::LLT<Matrix>& candidate = llt_[1 - active_];
    candidate.compute(shifted_);
    if (candidate.info() != Eigen::Success || !candidate.matrixLLT().allFinite()) {
      last_status_ = Status::NumericalIssue;
      return *this;
    }
    active_ = 1 - active_;
    damping_ = damping;
    inverse_valid_ = false;
    has_result_ = true;
    last_status_ = Status::Success;
    return *this;
  }

  /// Status of the last `compute()`.
  Status info() const noexcept { return last_status_; }
  bool has_result() const noexcept { return has_result_; }
  Scalar damping() const noexcept { return damping_; }

  /// `out = (A + λI)⁻¹ X` (X n×k) by two triangular solves.
  template <typename DerivedX>
  void solve(const Eigen::MatrixBase<DerivedX>& X, Matrix& out) const {
    require_result();
    if (X.rows() != llt().rows()) {
      throw ShapeError("kfopt::DampedCholeskyInverse::solve: X is " + detail::shape_of(X) +
                       " but the factor is " + detail::shape_string(llt().rows(), llt().rows()));
    }
    out = X;
    llt().solveInPlace(out);
  }

  /// The explicit inverse `(A + λI)⁻¹`, formed once per factorization as `L⁻ᵀ L⁻¹` (a
  /// triangular inversion and a symmetric rank-n product, not a solve against I).
  const Matrix& inverse() const {
    require_result();
    if (!inverse_valid_) {
      const Eigen::Index n = llt().rows();
      // L⁻¹: invert the lower-triangular factor in place.
      shifted_.setIdentity(n, n);
      llt().matrixL().solveInPlace(shifted_);
      // (A + λI)⁻¹ = L⁻ᵀ L⁻¹ = (L⁻¹)ᵀ (L⁻¹), a symmetric product: only one triangle.
      inverse_.setZero(n, n);
      inverse_.template selfadjointView<Eigen::Lower>().rankUpdate(shifted_.transpose());
      detail::symmetrize_from_lower(inverse_);
      inverse_valid_ = true;
    }
    return inverse_;
  }

 private:
  void require_result() const {
    if (!has_result_) {
      throw NumericalError(
          "kfopt::DampedCholeskyInverse: no factorization cached (compute() has not succeeded)");
    }
  }

  const Eigen::LLT<Matrix>& llt() const { return llt_[active_]; }

  Eigen::LLT<Matrix> llt_[2];  // the active factorization and a spare for the next compute
  int active_ = 0;
  mutable Matrix shifted_;
  mutable Matrix inverse_;
  Scalar damping_ = Scalar(0);
  Status last_status_ = Status::NotComputed;
  mutable bool inverse_valid_ = false;
  bool has_result_ = false;
};

}  // namespace kfopt
