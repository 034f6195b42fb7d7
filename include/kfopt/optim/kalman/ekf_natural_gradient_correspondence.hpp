#pragma once
/// \file ekf_natural_gradient_correspondence.hpp
/// \brief The hyperparameter map between the extended Kalman filter and the online natural
/// gradient, under which the two produce the same parameter trajectory.
///
/// Ollivier 2018, "Online natural gradient as a Kalman filter" (arXiv:1703.00209), the
/// theorem of the i.i.d. (static-parameter) case: if
///
///     γ_t = η_t,     P_0 = η_0 J_0⁻¹,     1/η_t = (1 − λ_t)/η_{t−1} + 1,
///
/// then for every t the EKF (fading λ_t, no process noise, model Fisher) and the natural
/// gradient (Fisher rate γ_t, step η_t, Fisher initialization J_0) satisfy θ^EKF_t = θ^NG_t
/// and P_t = η_t J_t⁻¹. Special cases: λ = 0 and η_0 = 1 give η_t = 1/(t+1) (the prior
/// counts as one observation, J_t is the running average of the Fishers); a constant λ
/// gives η_t → λ. η_0 is free (any η_0 > 0 works with the matching J_0).
///
/// The tests in tests/optim/test_ekf_natural_gradient_equivalence.cpp run both sides
/// against each other and against dense reference implementations.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/optim/kalman/extended_kalman_filter.hpp"
#include "kfopt/optim/kalman/online_natural_gradient.hpp"

namespace kfopt {

/// The step sizes η_t of the natural-gradient twin of an EKF with fading λ_t:
/// η_0 given, 1/η_t = (1 − λ_t)/η_{t−1} + 1.
///
/// A callable `η(t)` for `OnlineNaturalGradientHyperparameters::step_size_schedule`. It
/// remembers the last (t, η_t), so calls with increasing t cost O(1) each; an earlier t
/// replays the recursion from η_0 (O(t)). Copies are independent; not thread-safe.
template <typename Scalar>
class FadingMemoryStepSizes {
 public:
  /// \param eta0      η_0 > 0
  /// \param fading    constant λ ∈ [0, 1), used when `schedule` is empty
  /// \param schedule  optional λ_t, t ≥ 1
  FadingMemoryStepSizes(Scalar eta0, Scalar fading,
                        std::function<Scalar(std::int64_t)> schedule = {})
      : eta0_(eta0), fading_(fading), schedule_(std::move(schedule)), eta_(eta0) {
    detail::require_hyperparameter(std::isfinite(static_cast<double>(eta0)) && eta0 > Scalar(0),
                                   "kfopt::FadingMemoryStepSizes", "eta0", eta0, "(0, inf)");
  }

  /// The step size η_t of step `t`.
  Scalar operator()(std::int64_t t) {
    if (t < t_) {
      t_ = 0;
      eta_ = eta0_;
    }
    while (t_ < t) {
      ++t_;
      const Scalar lambda = schedule_ ? schedule_(t_) : fading_;
      eta_ = Scalar(1) / ((Scalar(1) - lambda) / eta_ + Scalar(1));
    }
    return eta_;
  }

 private:
  Scalar eta0_;
  Scalar fading_;
  std::function<Scalar(std::int64_t)> schedule_;
  std::int64_t t_ = 0;
  Scalar eta_;
};

/// η_t = 1/(t + 1/η_0): the closed form of the recursion for λ = 0 (η_0 = 1 gives 1/(t+1)).
template <typename Scalar>
std::function<Scalar(std::int64_t)> harmonic_step_sizes(Scalar eta0 = Scalar(1)) {
  detail::require_hyperparameter(std::isfinite(static_cast<double>(eta0)) && eta0 > Scalar(0),
                                 "kfopt::harmonic_step_sizes", "eta0", eta0, "(0, inf)");
  return [eta0](std::int64_t t) { return Scalar(1) / (Scalar(t) + Scalar(1) / eta0); };
}

/// λ_t that makes an EKF follow the natural-gradient step sizes η_{t−1} → η_t:
/// λ_t = 1 − η_{t−1} (1/η_t − 1). In [0, 1) iff 1/η_t − 1 ≤ 1/η_{t−1} (the step size
/// may not shrink faster than the harmonic rate) and η_t < 1.
template <typename Scalar>
Scalar fading_from_step_sizes(Scalar eta_previous, Scalar eta) {
  return Scalar(1) - eta_previous * (Scalar(1) / eta - Scalar(1));
}

/// Natural-gradient hyperparameters and Fisher initialization J_0 = η_0 P_0⁻¹.
template <typename Scalar>
struct NaturalGradientTwin {
  /// The natural-gradient hyperparameters.
  OnlineNaturalGradientHyperparameters<Scalar> hyperparameters;
  /// Fisher initialization J_0 (d×d).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> initial_fisher;
};

/// EKF hyperparameters and prior covariance P_0 = η_0 J_0⁻¹.
template <typename Scalar>
struct ExtendedKalmanFilterTwin {
  /// The EKF hyperparameters.
  ExtendedKalmanFilterHyperparameters<Scalar> hyperparameters;
  /// Prior covariance P_0 (d×d).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> initial_covariance;
};

namespace detail {
template <typename Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> scaled_spd_inverse(
    const char* op, const char* operand,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& M,
    Scalar scale) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  require_nonempty(op, operand, M);
  require_symmetric(op, operand, M);
  Eigen::LLT<Matrix> llt(M);
  if (llt.info() != Eigen::Success) {
    throw InvalidInputError(std::string(op) + ": " + operand + " (" + shape_of(M) +
                            ") is not positive definite");
  }
  Matrix out = llt.solve(Matrix::Identity(M.rows(), M.cols())) * scale;
  symmetrize(out);
  return out;
}
}  // namespace detail

/// The online natural gradient equal to an EKF with hyperparameters `ekf` and prior P_0:
/// γ_t = η_t from FadingMemoryStepSizes(η_0, λ), J_0 = η_0 P_0⁻¹, the model Fisher and the
/// same update form. Throws HyperparameterError if the EKF has process noise (no twin) and
/// InvalidInputError if P_0 is not SPD. Cost O(d³) once.
template <typename Scalar>
NaturalGradientTwin<Scalar> natural_gradient_twin(
    const ExtendedKalmanFilterHyperparameters<Scalar>& ekf,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>&
        initial_covariance,
    Scalar eta0 = Scalar(1)) {
  const char* op = "kfopt::natural_gradient_twin";
  ekf.validate();
  detail::require_hyperparameter(ekf.process_noise.size() == 0, op, "process_noise",
                                 detail::shape_of(ekf.process_noise),
                                 "empty matrices (a filter with additive process noise has no "
                                 "natural-gradient twin)");
  NaturalGradientTwin<Scalar> twin;
  twin.hyperparameters.step_size_schedule =
      FadingMemoryStepSizes<Scalar>(eta0, ekf.fading, ekf.fading_schedule);
  twin.hyperparameters.fisher_rate_is_step_size = true;
  twin.hyperparameters.fisher = FisherKind::Model;
  twin.hyperparameters.form = ekf.form;
  twin.initial_fisher =
      detail::scaled_spd_inverse<Scalar>(op, "initial_covariance", initial_covariance, eta0);
  return twin;
}

/// The EKF equal to an online natural gradient with hyperparameters `ng`, Fisher
/// initialization J_0 and η_0: P_0 = η_0 J_0⁻¹ and λ_t = 1 − η_{t−1}(1/η_t − 1). Requires
/// γ_t = η_t and the model Fisher (HyperparameterError otherwise); the EKF rejects, at the
/// step where it happens, a λ_t outside [0, 1) (step sizes shrinking faster than 1/t).
template <typename Scalar>
ExtendedKalmanFilterTwin<Scalar> extended_kalman_filter_twin(
    const OnlineNaturalGradientHyperparameters<Scalar>& ng,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>& initial_fisher,
    Scalar eta0) {
  const char* op = "kfopt::extended_kalman_filter_twin";
  ng.validate();
  detail::require_hyperparameter(ng.fisher_rate_is_step_size, op, "fisher_rate_is_step_size",
                                 ng.fisher_rate_is_step_size,
                                 "{true} (the EKF twin needs gamma_t = eta_t)");
  detail::require_hyperparameter(ng.fisher == FisherKind::Model, op, "fisher", "empirical",
                                 "{model} (the EKF twin needs the model Fisher)");
  detail::require_hyperparameter(std::isfinite(static_cast<double>(eta0)) && eta0 > Scalar(0),
                                 op, "eta0", eta0, "(0, inf)");
  ExtendedKalmanFilterTwin<Scalar> twin;
  twin.hyperparameters.form = ng.form;
  auto eta = ng.step_size_schedule;
  const Scalar constant = ng.step_size;
  twin.hyperparameters.fading_schedule = [eta, constant, eta0](std::int64_t t) mutable {
    const Scalar previous = t <= 1 ? eta0 : (eta ? eta(t - 1) : constant);
    const Scalar current = eta ? eta(t) : constant;  // after t − 1: memoized schedules stay O(1)
    return fading_from_step_sizes(previous, current);
  };
  twin.initial_covariance =
      detail::scaled_spd_inverse<Scalar>(op, "initial_fisher", initial_fisher, eta0);
  return twin;
}

}  // namespace kfopt
