#pragma once
/// \file observation_model.hpp
/// \brief Exponential-family observation models: the common interface, and the
/// linearization that turns (model, output, Jacobian, target) into the square-root
/// information form the Kalman update consumes.
///
/// Setting (Ollivier 2018, arXiv:1703.00209, exponential-family observations in mean
/// form): the model outputs a vector z = g(θ, u); the
/// observation y has density p(y | z) in an exponential family with sufficient statistic
/// T(y), mean ŷ = E[T(y)] and covariance R(ŷ) = Cov[T(y)]; the loss is ℓ = −ln p(y | z).
///
/// The output z is either
///  - the **mean** ŷ itself (`ObservationLink::Mean`): then ∂ℓ/∂z = −R⁻¹ (T(y) − ŷ) and the
///    Fisher of z is R⁻¹ — this divides by the variance, and is undefined where it
///    vanishes (a Bernoulli probability of exactly 0 or 1, a Poisson rate of 0);
///  - the **natural parameter** (`ObservationLink::Canonical`: logit, log-rate, logits of a
///    softmax): then ∂ℓ/∂z = ŷ − T(y) and the Fisher of z is R itself — no division, finite
///    even for a saturated sigmoid or a singular softmax covariance.
///
/// With J = ∂z/∂θ, the parameter gradient is ∇ℓ = Jᵀ ∂ℓ/∂z and the (true, model) Fisher
/// of θ is F = Jᵀ F_z J, which does not depend on the observed y. Each model provides a
/// square root F_z = Bᵀ B, so F = Gᵀ G with G = B J: that is all a Kalman update or a
/// natural-gradient step needs (in mean form G = R^{-1/2} H, the whitened Jacobian).
///
/// ## The ObservationModel concept
///
/// A model type `M` provides:
/// ```
/// using Scalar; using Vector; using Matrix; using Target;       // Target: what y is
/// static constexpr ObservationLink link;
/// Eigen::Index output_dim() const;     // k = size of z (and of T(y), ŷ)
/// Eigen::Index factor_rows() const;    // rows of the Fisher square root B
/// Status check_target(const char* op, const Target& y) const;
///     // NonFiniteInput for NaN/Inf; throws InvalidInputError / ShapeError when y is
///     // outside the support (Bernoulli y ∉ {0,1}, class index out of range, ...)
/// void sufficient_statistic(const Target& y, Eigen::Ref<Vector> T) const;      // T(y)
/// void mean(const Eigen::Ref<const Vector>& z, Eigen::Ref<Vector> yhat) const;  // ŷ(z)
/// void statistic_covariance(const Eigen::Ref<const Vector>& yhat,
///                           Eigen::Ref<Matrix> R) const;                        // R(ŷ)
/// Scalar loss(const Eigen::Ref<const Vector>& z, const Target& y) const;       // −ln p
/// bool loss_gradient(const Eigen::Ref<const Vector>& z, const Target& y,
///                    Eigen::Ref<Vector> grad) const;                            // ∂ℓ/∂z
/// void fisher(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> F) const;   // F_z
/// bool fisher_factor(const Eigen::Ref<const Vector>& z, Eigen::Ref<Matrix> B) const;
///     // F_z = Bᵀ B; the bools are false where the quantity is undefined (mean form at
///     // the boundary of the mean domain), which the filters report as NumericalIssue
/// ```
/// The models kfopt ships: GaussianObservation, BernoulliObservation,
/// CategoricalObservation, PoissonObservation (observation_models.hpp).

#include <Eigen/Core>
#include <cmath>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/tiled_product.hpp"

namespace kfopt {

/// How the model output z parametrizes the observation distribution.
enum class ObservationLink {
  Canonical,  ///< z is the natural parameter (logit, log-rate, softmax logits)
  Mean,       ///< z is the mean ŷ = E[T(y)] itself
};

/// Which curvature a natural-gradient step uses.
enum class FisherKind {
  /// The true Fisher F = E_{y~p(·|z)}[∇ℓ ∇ℓᵀ] = Jᵀ F_z J, independent of the observed y.
  /// This is the one that makes the online natural gradient equal to the EKF.
  Model,
  /// The empirical Fisher ∇ℓ(y_t) ∇ℓ(y_t)ᵀ of the observed target. Cheaper for large k
  /// (one rank-1 term), but it is not the EKF and it vanishes at a perfect fit.
  Empirical,
};

/// One observation, linearized at the current parameters: everything a Kalman update or a
/// natural-gradient step needs. Used as a reusable workspace (no allocation once sized).
template <typename Scalar>
struct LinearizedObservation {
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  Matrix factor_t;   ///< Gᵀ (d×r), stored transposed: the observation's Fisher is F = Gᵀ G
  Vector score;      ///< g = −∇_θ ℓ = Jᵀ (T(y) − ŷ) in canonical form (d)
  Vector output_gradient;  ///< ∂ℓ/∂z (k)
  Matrix output_factor;    ///< B (r×k) with F_z = Bᵀ B
  Scalar loss = Scalar(0); ///< ℓ = −ln p(y | z)
};

/// Linearizes one observation: with z the model output, J = ∂z/∂θ (k×d) and y the target,
/// fills `out` with Gᵀ = Jᵀ Bᵀ (model Fisher; or Jᵀ ∂ℓ/∂z for the empirical Fisher), the
/// score g = −Jᵀ ∂ℓ/∂z and the loss.
///
/// Errors: ShapeError if z or J do not have the model's k rows; the model's own
/// InvalidInputError for a target outside the support. Returns NonFiniteInput for NaN/Inf
/// in z, J or y; NumericalIssue where the model's gradient or Fisher is undefined or not
/// finite (mean form at a boundary, an overflowing exponential). Cost O(r k d) for the
/// products, plus the model's O(k²).
template <typename Model>
Status linearize_observation(
    const char* operation, const Model& model,
    const Eigen::Ref<const typename Model::Vector>& z,
    const Eigen::Ref<const typename Model::Matrix>& J, const typename Model::Target& y,
    FisherKind fisher, LinearizedObservation<typename Model::Scalar>& out) {
  const Eigen::Index k = model.output_dim();
  const Eigen::Index d = J.cols();
  detail::require_shape(operation, "model output z", z, k, 1);
  detail::require_shape(operation, "Jacobian dz/dtheta", J, k, d);
  const Status target_status = model.check_target(operation, y);
  if (target_status != Status::Success) return target_status;
  if (!z.allFinite() || !J.allFinite()) return Status::NonFiniteInput;

  if (out.output_gradient.size() != k) out.output_gradient.resize(k);
  if (out.score.size() != d) out.score.resize(d);
  if (!model.loss_gradient(z, y, out.output_gradient) || !out.output_gradient.allFinite()) {
    return Status::NumericalIssue;
  }
  out.loss = model.loss(z, y);
  out.score.noalias() = J.transpose() * out.output_gradient;
  out.score = -out.score;
  if (fisher == FisherKind::Model) {
    const Eigen::Index r = model.factor_rows();
    if (out.output_factor.rows() != r || out.output_factor.cols() != k) {
      out.output_factor.resize(r, k);
    }
    if (!model.fisher_factor(z, out.output_factor) || !out.output_factor.allFinite()) {
      return Status::NumericalIssue;
    }
    if (out.factor_t.rows() != d || out.factor_t.cols() != r) out.factor_t.resize(d, r);
    if (r == 1) {
      out.factor_t.col(0).noalias() = J.transpose() * out.output_factor.row(0).transpose();
    } else {
      out.factor_t.setZero();
      detail::tiled_multiply_add(out.factor_t, J.transpose(), out.output_factor.transpose(),
                                 typename Model::Scalar(1));
    }
  } else {
    if (out.factor_t.rows() != d || out.factor_t.cols() != 1) out.factor_t.resize(d, 1);
    out.factor_t.col(0) = -out.score;
  }
  if (!out.score.allFinite() || !out.factor_t.allFinite() ||
      !std::isfinite(static_cast<double>(out.loss))) {
    return Status::NumericalIssue;
  }
  return Status::Success;
}

}  // namespace kfopt
