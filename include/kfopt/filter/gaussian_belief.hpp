#pragma once
/// \file gaussian_belief.hpp
/// \brief A Gaussian belief N(m, P) over a parameter or state vector, with the covariance
/// stored either as P itself or as the Cholesky factor of the precision P⁻¹.
///
/// This is the object every filter in kfopt updates: the extended Kalman filter and the
/// online natural gradient (Ollivier 2018, arXiv:1703.00209), the joint state/parameter
/// filter of the recurrent case, and the Bayesian-filter optimizers. The storage decides
/// which algebra the update uses (see `KalmanForm` and kalman_update.hpp):
///
/// | form          | stored                          | rank-1 update cost            |
/// |---------------|---------------------------------|-------------------------------|
/// | `Covariance`  | P (full, exactly symmetric)     | ~2d² (Sherman–Morrison)       |
/// | `Joseph`      | P (full, exactly symmetric)     | ~6d² (Joseph product)         |
/// | `Information` | L, lower, with P⁻¹ = L Lᵀ       | ~3d² (Givens sweep + 2 solves) |
///
/// The mean is kept apart (`GaussianBelief::mean`, or the caller's own parameter vector in
/// the optimizers) so that parameters can live in user storage.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// How a belief stores its covariance, and hence which Kalman update it receives.
enum class KalmanForm {
  /// Stores P. Update P⁺ = P − P Gᵀ (I + G P Gᵀ)⁻¹ G P: Sherman–Morrison for one
  /// observation row, Woodbury for r rows. Cheapest; can lose definiteness by rounding
  /// when an update removes almost all variance in some direction.
  Covariance,
  /// Stores P. Update P⁺ = (I − K G) P (I − K G)ᵀ + K Kᵀ (Joseph form, unit whitened noise):
  /// a sum of two positive semi-definite terms, so rounding cannot make it indefinite.
  /// About three times the cost of `Covariance`, plus a d×d workspace.
  Joseph,
  /// Stores the lower Cholesky factor L of the precision P⁻¹ = L Lᵀ (information filter).
  /// Update P⁺⁻¹ = P⁻¹ + Gᵀ G by r rank-1 updates of L; the precision can only grow.
  Information,
};

/// Name of a form, for messages.
inline const char* to_string(KalmanForm form) noexcept {
  switch (form) {
    case KalmanForm::Covariance: return "covariance";
    case KalmanForm::Joseph: return "joseph";
    case KalmanForm::Information: return "information";
  }
  return "unknown form";
}

namespace detail {

/// Rank-1 update of a lower Cholesky factor in place: on return L Lᵀ = L₀ L₀ᵀ + v vᵀ.
///
/// `w` holds v on entry and is overwritten (it is the workspace). Only the lower triangle of
/// L is read or written. One sweep of plane rotations, about 2n² multiply-adds, no
/// allocation. Requires a positive diagonal on entry; the diagonal only grows.
template <typename Scalar>
void cholesky_rank1_update(Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> L,
                           Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> w) {
  const Eigen::Index n = L.rows();
  for (Eigen::Index k = 0; k < n; ++k) {
    const Scalar wk = w(k);
    if (wk == Scalar(0)) continue;  // the rotation is the identity
    const Scalar lkk = L(k, k);
    const Scalar r = std::hypot(lkk, wk);
    const Scalar c = r / lkk;
    const Scalar s = wk / lkk;
    L(k, k) = r;
    const Eigen::Index m = n - k - 1;
    if (m > 0) {
      auto lcol = L.col(k).tail(m);
      auto wt = w.tail(m);
      lcol = (lcol + s * wt) / c;
      wt = c * wt - s * lcol;
    }
  }
}

/// Whether symmetric `M` is positive semi-definite up to rounding: M + δ I is positive
/// definite for δ = n √ε max(1, max|M|). (An LDLᵀ of a singular matrix can fail on rounding
/// noise; this test cannot.) One Cholesky factorization, n³/3 flops.
template <typename Derived>
bool is_positive_semidefinite(const Eigen::MatrixBase<Derived>& M) {
  using Scalar = typename Derived::Scalar;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  if (M.rows() != M.cols() || !M.allFinite()) return false;
  if (M.size() == 0) return true;
  const Scalar scale = std::max(Scalar(1), M.cwiseAbs().maxCoeff());
  const Scalar shift = Scalar(M.rows()) * ScalarTraits<Scalar>::symmetry_tolerance() * scale;
  Matrix shifted = M;
  shifted.diagonal().array() += shift;
  return Eigen::LLT<Matrix>(shifted).info() == Eigen::Success;
}

}  // namespace detail

/// The covariance of a Gaussian belief, stored as P (covariance forms) or as the lower
/// Cholesky factor of P⁻¹ (information form).
///
/// Invariants: in the covariance forms `storage()` is d×d and exactly symmetric; in the
/// information form it is d×d lower triangular with a positive diagonal and a zero strict
/// upper triangle. Code that writes `storage()` directly must keep them.
template <typename Scalar>
class BeliefCovariance {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  BeliefCovariance() = default;

  /// From a covariance P (d×d, symmetric, positive definite; semi-definite if
  /// `allow_singular` and the form is Covariance or Joseph). Throws ShapeError /
  /// InvalidInputError otherwise. Cost O(d³) once (a Cholesky or LDLᵀ factorization;
  /// the information form also inverts P).
  static BeliefCovariance from_covariance(const Eigen::Ref<const Matrix>& P,
                                          KalmanForm form = KalmanForm::Covariance,
                                          bool allow_singular = false) {
    const char* op = "kfopt::BeliefCovariance::from_covariance";
    detail::require_symmetric(op, "P", P);
    BeliefCovariance out;
    out.form_ = form;
    if (form == KalmanForm::Information) {
      Eigen::LLT<Matrix> llt(P);
      if (llt.info() != Eigen::Success) {
        throw InvalidInputError(std::string(op) + ": P (" + detail::shape_of(P) +
                                ") is not positive definite (the information form needs "
                                "P⁻¹)");
      }
      Matrix precision = llt.solve(Matrix::Identity(P.rows(), P.cols()));
      detail::symmetrize(precision);
      out.set_precision_factor(op, precision);
    } else {
      require_semidefinite(op, "P", P, allow_singular);
      out.matrix_ = P;
      detail::symmetrize(out.matrix_);
    }
    return out;
  }

  /// From a precision Λ = P⁻¹ (d×d, symmetric positive definite). Cost O(d³) once.
  static BeliefCovariance from_precision(const Eigen::Ref<const Matrix>& Lambda,
                                         KalmanForm form = KalmanForm::Information) {
    const char* op = "kfopt::BeliefCovariance::from_precision";
    detail::require_symmetric(op, "Lambda", Lambda);
    BeliefCovariance out;
    out.form_ = form;
    if (form == KalmanForm::Information) {
      out.set_precision_factor(op, Lambda);
    } else {
      Eigen::LLT<Matrix> llt(Lambda);
      if (llt.info() != Eigen::Success) {
        throw InvalidInputError(std::string(op) + ": Lambda (" + detail::shape_of(Lambda) +
                                ") is not positive definite");
      }
      out.matrix_ = llt.solve(Matrix::Identity(Lambda.rows(), Lambda.cols()));
      detail::symmetrize(out.matrix_);
    }
    return out;
  }

  /// Dimension d.
  Eigen::Index dim() const noexcept { return matrix_.rows(); }
  /// The storage form.
  KalmanForm form() const noexcept { return form_; }
  /// Whether P itself is stored (Covariance or Joseph form).
  bool stores_covariance() const noexcept { return form_ != KalmanForm::Information; }

  /// Dense covariance P. Free in the covariance forms; O(d³) in the information form.
  Matrix covariance() const {
    if (stores_covariance()) return matrix_;
    Matrix P = Matrix::Identity(dim(), dim());
    const auto L = matrix_.template triangularView<Eigen::Lower>();
    L.solveInPlace(P);
    L.transpose().solveInPlace(P);
    detail::symmetrize(P);
    return P;
  }

  /// Dense precision P⁻¹. O(d³) (L Lᵀ in the information form, an inversion otherwise,
  /// with a NumericalError if the stored P is singular).
  Matrix precision() const {
    if (!stores_covariance()) {
      const Matrix L = matrix_.template triangularView<Eigen::Lower>();
      Matrix Lambda = L * L.transpose();
      detail::symmetrize(Lambda);
      return Lambda;
    }
    Eigen::LLT<Matrix> llt(matrix_);
    if (llt.info() != Eigen::Success) {
      throw NumericalError("kfopt::BeliefCovariance::precision: P (" +
                           detail::shape_of(matrix_) + ") is singular");
    }
    Matrix Lambda = llt.solve(Matrix::Identity(dim(), dim()));
    detail::symmetrize(Lambda);
    return Lambda;
  }

  /// out = P v without forming P. O(d²) in every form (two triangular solves in the
  /// information form). `out` must not alias `v`.
  void multiply_covariance(const Eigen::Ref<const Vector>& v, Eigen::Ref<Vector> out) const {
    const char* op = "kfopt::BeliefCovariance::multiply_covariance";
    detail::require_shape(op, "v", v, dim(), 1);
    detail::require_shape(op, "out", out, dim(), 1);
    if (stores_covariance()) {
      out.noalias() = matrix_ * v;
    } else {
      out = v;
      matrix_.template triangularView<Eigen::Lower>().solveInPlace(out);
      matrix_.template triangularView<Eigen::Lower>().transpose().solveInPlace(out);
    }
  }

  /// P ← c P for c > 0 (fading memory uses c = 1/(1−λ)). O(d²).
  void inflate(Scalar c) {
    if (!(c > Scalar(0)) || !std::isfinite(static_cast<double>(c))) {
      throw InvalidInputError("kfopt::BeliefCovariance::inflate: factor must be finite and > 0");
    }
    if (stores_covariance()) {
      matrix_ *= c;
    } else {
      matrix_.template triangularView<Eigen::Lower>() *= Scalar(1) / std::sqrt(c);
    }
  }

  /// The stored matrix: P (covariance forms) or L with P⁻¹ = L Lᵀ (information form).
  const Matrix& storage() const noexcept { return matrix_; }
  /// Mutable storage, for the update and predict algebra; keep the invariants above.
  Matrix& storage() noexcept { return matrix_; }

  /// Switches the update form. Covariance ↔ Joseph is free; to or from Information costs
  /// O(d³) (an inversion and a Cholesky factorization).
  void convert_to(KalmanForm form) {
    if (form == form_) return;
    if (stores_covariance() && form != KalmanForm::Information) {
      form_ = form;
      return;
    }
    if (stores_covariance()) {
      *this = from_covariance(matrix_, form);
    } else {
      *this = from_precision(precision(), form);
    }
  }

 private:
  template <typename Derived>
  static void require_semidefinite(const char* op, const char* operand,
                                   const Eigen::MatrixBase<Derived>& P, bool allow_singular) {
    if (!allow_singular) {
      Eigen::LLT<Matrix> llt(P);
      if (llt.info() != Eigen::Success) {
        throw InvalidInputError(std::string(op) + ": " + operand + " (" + detail::shape_of(P) +
                                ") is not positive definite");
      }
      return;
    }
    if (!detail::is_positive_semidefinite(P)) {
      throw InvalidInputError(std::string(op) + ": " + operand + " (" + detail::shape_of(P) +
                              ") is not positive semi-definite");
    }
  }

  template <typename Derived>
  void set_precision_factor(const char* op, const Eigen::MatrixBase<Derived>& Lambda) {
    Eigen::LLT<Matrix> llt(Lambda);
    if (llt.info() != Eigen::Success) {
      throw InvalidInputError(std::string(op) + ": precision (" + detail::shape_of(Lambda) +
                              ") is not positive definite");
    }
    matrix_ = llt.matrixL();  // strict upper triangle set to zero
  }

  KalmanForm form_ = KalmanForm::Covariance;
  Matrix matrix_;
};

/// A Gaussian belief N(mean, P): a mean vector and a `BeliefCovariance`.
template <typename Scalar>
struct GaussianBelief {
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  Vector mean;                           ///< m (d)
  BeliefCovariance<Scalar> covariance;   ///< P, or the factor of P⁻¹

  GaussianBelief() = default;
  /// Throws ShapeError unless `m` has P's dimension; see BeliefCovariance::from_covariance.
  GaussianBelief(const Eigen::Ref<const Vector>& m, const Eigen::Ref<const Matrix>& P,
                 KalmanForm form = KalmanForm::Covariance, bool allow_singular = false)
      : mean(m), covariance(BeliefCovariance<Scalar>::from_covariance(P, form, allow_singular)) {
    detail::require_shape("kfopt::GaussianBelief", "mean", m, P.rows(), 1);
    detail::require_finite("kfopt::GaussianBelief", "mean", m);
  }

  /// Dimension of the belief (size of the mean).
  Eigen::Index dim() const noexcept { return mean.size(); }
};

}  // namespace kfopt
