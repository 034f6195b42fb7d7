#pragma once
/// \file observation_step.hpp
/// \brief What every per-observation optimizer over a parameter vector θ does around its
/// own update: check the shapes of θ, z and ∂z/∂θ; call a caller-supplied predictor into
/// preallocated storage; linearize the observation model at z; count a skipped step; check
/// a restored (checkpointed) belief.
///
/// ExtendedKalmanFilter and OnlineNaturalGradient (Ollivier 2018) are the same algorithm in
/// two parameterizations: they differ only in how the linearized observation scales the
/// Fisher rows and the score before the Kalman update. Everything else lives here once.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/gaussian_belief.hpp"
#include "kfopt/filter/kalman_update.hpp"
#include "kfopt/filter/observation_model.hpp"

namespace kfopt {
namespace detail {

/// The observation model, the linearization and the Kalman updater of one optimizer, with
/// storage for a predictor's output (k) and Jacobian (k×d). No allocation after `allocate`.
template <typename Model>
class ObservationStep {
 public:
  using Scalar = typename Model::Scalar;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Target = typename Model::Target;

  explicit ObservationStep(Model model)
      : model_(std::move(model)), k_(model_.output_dim()) {}

  /// Storage for θ of size d and updates with up to `factor_rows` Fisher rows.
  void allocate(Eigen::Index d, Eigen::Index factor_rows) {
    d_ = d;
    output_.resize(k_);
    jacobian_.resize(k_, d_);
    updater_.reserve(d_, factor_rows);
  }

  /// ShapeError naming `op` unless θ is d, z is k and ∂z/∂θ is k×d.
  void require_shapes(const char* op, const Eigen::Ref<const Vector>& theta,
                      const Eigen::Ref<const Vector>& output,
                      const Eigen::Ref<const Matrix>& jacobian) const {
    require_shape(op, "theta", theta, d_, 1);
    require_shape(op, "output", output, k_, 1);
    require_shape(op, "jacobian", jacobian, k_, d_);
  }

  /// Calls `predictor(const Eigen::Ref<const Vector>& theta, Eigen::Ref<Vector> z,
  /// Eigen::Ref<Matrix> jacobian)` into the internal storage (read back with output() and
  /// jacobian()).
  template <typename Predictor>
  void predict(const char* op, const Eigen::Ref<const Vector>& theta, Predictor&& predictor) {
    require_shape(op, "theta", theta, d_, 1);
    predictor(theta, Eigen::Ref<Vector>(output_), Eigen::Ref<Matrix>(jacobian_));
  }

  /// Linearizes the model at z for target y (observation_model.hpp): Fisher rows Gᵀ, score
  /// −∇ℓ and loss, into linearization().
  Status linearize(const char* op, const Eigen::Ref<const Vector>& output,
                   const Eigen::Ref<const Matrix>& jacobian, const Target& y, FisherKind fisher) {
    return linearize_observation(op, model_, output, jacobian, y, fisher, linearization_);
  }

  const Model& model() const noexcept { return model_; }
  Eigen::Index dim() const noexcept { return d_; }
  Eigen::Index output_dim() const noexcept { return k_; }
  const Vector& output() const noexcept { return output_; }
  const Matrix& jacobian() const noexcept { return jacobian_; }
  const LinearizedObservation<Scalar>& linearization() const noexcept { return linearization_; }
  KalmanUpdater<Scalar>& updater() noexcept { return updater_; }
  const KalmanUpdater<Scalar>& updater() const noexcept { return updater_; }

 private:
  Model model_;
  Eigen::Index d_ = 0;
  Eigen::Index k_ = 0;
  LinearizedObservation<Scalar> linearization_;
  KalmanUpdater<Scalar> updater_;
  Vector output_;
  Matrix jacobian_;
};

/// A rejected step: counts it and records why in a state with `skipped` and `last_status`;
/// nothing else changes. Returns `status`.
template <typename State>
Status record_skipped_step(State& state, Status status) {
  ++state.skipped;
  state.last_status = status;
  return status;
}

/// Checks a belief restored from a checkpoint: d×d storage in the optimizer's form, finite;
/// in the covariance forms symmetric with a non-negative diagonal and positive
/// semi-definite (one O(d³) factorization); in the information form lower triangular with
/// a positive diagonal. ShapeError / InvalidInputError naming `op`, `name` and what is wrong.
template <typename Scalar>
void require_restorable_belief(const char* op, const char* name,
                               const BeliefCovariance<Scalar>& belief, Eigen::Index d,
                               KalmanForm form) {
  const std::string what = std::string(op) + ": " + name;
  require_shape(op, name, belief.storage(), d, d);
  if (belief.form() != form) {
    throw InvalidInputError(std::string(op) + ": state is in " + to_string(belief.form()) +
                            " form but the optimizer uses " + to_string(form));
  }
  const auto& S = belief.storage();
  if (!all_finite(S)) throw InvalidInputError(what + " holds NaN or Inf");
  for (Eigen::Index i = 0; i < d; ++i) {
    const bool ok = belief.stores_covariance() ? S(i, i) >= Scalar(0) : S(i, i) > Scalar(0);
    if (!ok) {
      throw InvalidInputError(what + " has diagonal entry (" + std::to_string(i) + ", " +
                              std::to_string(i) + ") = " + std::to_string(static_cast<double>(S(i, i))) +
                              (belief.stores_covariance() ? " < 0 (a negative variance)"
                                                          : " <= 0 (the Cholesky factor of the "
                                                            "precision needs a positive diagonal)"));
    }
  }
  if (belief.stores_covariance()) {
    if (!is_symmetric(S)) throw InvalidInputError(what + " is not symmetric");
    if (!is_positive_semidefinite(S)) {
      throw InvalidInputError(what + " is not positive semi-definite");
    }
  } else if (!(S.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix().array() ==
               Scalar(0)).all()) {
    throw InvalidInputError(what + " (the information form's Cholesky factor) is not lower "
                            "triangular");
  }
}

/// Throws InvalidInputError naming `op` unless the restored step counters are >= 0 and the
/// last loss is finite.
template <typename Scalar>
void require_restorable_counters(const char* op, std::int64_t step, std::int64_t skipped,
                                 Scalar last_loss) {
  require_counter(op, "step", step);
  require_counter(op, "skipped", skipped);
  if (!std::isfinite(static_cast<double>(last_loss))) {
    throw InvalidInputError(std::string(op) + ": last_loss is not finite");
  }
}

}  // namespace detail
}  // namespace kfopt
