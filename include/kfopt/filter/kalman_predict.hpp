#pragma once
/// \file kalman_predict.hpp
/// \brief The Kalman predict (time-update) step: transition and process noise.
///
///     m⁻ = F m (+ b),          P⁻ = F P Fᵀ + Q.
///
/// For a static parameter (Ollivier 2018, arXiv:1703.00209, the "EKF on a static
/// parameter"), F = I and the predict reduces to fading memory P⁻ = P/(1−λ) and/or
/// additive noise P⁻ = P + Q. Those two are folded into the update (KalmanUpdater's
/// `inflation` and `process_noise` arguments) so that a step is all-or-nothing; the
/// functions here are the general, stand-alone predict.
///
/// Costs: `kalman_fade` O(d²) in every form. `kalman_add_process_noise` O(d²) in the
/// covariance forms, O(d³) in the information form (it must refactor the precision).
/// `kalman_predict` O(d³) (two d×d products; an inversion and a refactorization in the
/// information form): a dense transition is inherently cubic.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/gaussian_belief.hpp"

namespace kfopt {

/// Fading memory: P ← P/(1−λ) for λ ∈ [0, 1). O(d²). Throws InvalidInputError otherwise.
template <typename Scalar>
void kalman_fade(BeliefCovariance<Scalar>& cov, Scalar fading) {
  if (!(fading >= Scalar(0) && fading < Scalar(1))) {
    throw InvalidInputError("kfopt::kalman_fade: fading factor must lie in [0, 1)");
  }
  if (fading > Scalar(0)) cov.inflate(Scalar(1) / (Scalar(1) - fading));
}

namespace detail {

/// Commits a predicted covariance `Pnew` (symmetric, in `work`) into `cov` in its own form.
/// Returns NumericalIssue (and leaves `cov` unchanged) if the information form cannot be
/// refactored or the result is not finite.
template <typename Scalar>
Status commit_predicted_covariance(BeliefCovariance<Scalar>& cov,
                                   Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& Pnew) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  if (!Pnew.allFinite()) return Status::NumericalIssue;
  symmetrize(Pnew);
  if (cov.stores_covariance()) {
    cov.storage().swap(Pnew);
    return Status::Success;
  }
  Eigen::LLT<Matrix> llt(Pnew);
  if (llt.info() != Eigen::Success) return Status::NumericalIssue;
  Matrix precision = llt.solve(Matrix::Identity(Pnew.rows(), Pnew.cols()));
  symmetrize(precision);
  Eigen::LLT<Matrix> factor(precision);
  if (factor.info() != Eigen::Success) return Status::NumericalIssue;
  cov.storage() = factor.matrixL();
  return Status::Success;
}

}  // namespace detail

/// Additive process noise: P ← P + Q (Q d×d symmetric positive semi-definite; the
/// symmetry is checked, semi-definiteness is the caller's responsibility).
///
/// Returns Success, or NumericalIssue with `cov` unchanged if the information form cannot
/// be refactored. Cost O(d²) in the covariance forms, O(d³) in the information form.
template <typename Scalar>
Status kalman_add_process_noise(
    BeliefCovariance<Scalar>& cov,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& Q) {
  const char* op = "kfopt::kalman_add_process_noise";
  detail::require_shape(op, "Q", Q, cov.dim(), cov.dim());
  detail::require_symmetric(op, "Q", Q);
  if (cov.stores_covariance()) {
    cov.storage() += Q;
    detail::symmetrize(cov.storage());
    return Status::Success;
  }
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> P = cov.covariance() + Q;
  return detail::commit_predicted_covariance(cov, P);
}

/// Linear predict: mean ← F mean, P ← F P Fᵀ + Q.
///
/// F d×d, Q d×d symmetric positive semi-definite (or empty for no noise). Inputs with NaN
/// or Inf give Status::NonFiniteInput and leave the belief unchanged; shape errors throw.
/// `work` is a d×d workspace (resized on first use). For an extended Kalman filter, where
/// the mean moves by a nonlinear f, call `kalman_predict_covariance` with F = ∂f/∂x and set
/// the mean yourself. Cost O(d³); allocates one d×d temporary (a general dense predict is
/// not on any optimizer's per-step path).
template <typename Scalar>
Status kalman_predict_covariance(
    BeliefCovariance<Scalar>& cov,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& F,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& Q,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* op = "kfopt::kalman_predict";
  const Eigen::Index d = cov.dim();
  detail::require_shape(op, "F", F, d, d);
  const bool has_noise = Q.size() > 0;
  if (has_noise) detail::require_shape(op, "Q", Q, d, d);
  if (!F.allFinite() || (has_noise && !Q.allFinite())) return Status::NonFiniteInput;
  if (has_noise) detail::require_symmetric(op, "Q", Q);
  Matrix Pnew(d, d);
  if (cov.stores_covariance()) {
    work.noalias() = F * cov.storage();
  } else {
    work.noalias() = F * cov.covariance();
  }
  Pnew.noalias() = work * F.transpose();
  if (has_noise) Pnew += Q;
  return detail::commit_predicted_covariance(cov, Pnew);
}

/// Linear predict of a full belief: mean ← F mean, P ← F P Fᵀ + Q (see above).
template <typename Scalar>
Status kalman_predict(
    GaussianBelief<Scalar>& belief,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& F,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& Q,
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& work) {
  detail::require_shape("kfopt::kalman_predict", "mean", belief.mean, belief.covariance.dim(), 1);
  detail::require_shape("kfopt::kalman_predict", "F", F, belief.covariance.dim(),
                        belief.covariance.dim());
  const Eigen::Matrix<Scalar, Eigen::Dynamic, 1> mean = F * belief.mean;
  if (!mean.allFinite()) return Status::NonFiniteInput;
  const Status status = kalman_predict_covariance(belief.covariance, F, Q, work);
  if (status == Status::Success) belief.mean = mean;
  return status;
}

}  // namespace kfopt
