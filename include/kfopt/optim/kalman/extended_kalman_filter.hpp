#pragma once
/// \file extended_kalman_filter.hpp
/// \brief Extended Kalman filter over a static parameter vector θ, as an optimizer.
///
/// Ollivier 2018, "Online natural gradient as a Kalman filter" (arXiv:1703.00209), the
/// extended Kalman filter on a static parameter (the i.i.d. case). For observation t = 1, 2, …
/// with model output z_t = g(θ_{t−1}, u_t), Jacobian J_t = ∂z/∂θ and target y_t:
///
///     predict   P_{t|t−1} = P_{t−1|t−1} / (1 − λ_t)  (+ Q)
///     update    P_{t|t}⁻¹ = P_{t|t−1}⁻¹ + F_t,      F_t = J_tᵀ F_z J_t (model Fisher)
///               θ_t       = θ_{t−1} + P_{t|t} J_tᵀ (T(y_t) − ŷ_t)  [canonical link]
///                         = θ_{t−1} + K_t (T(y_t) − ŷ_t)           [mean link, K the gain]
///
/// With Q = 0 this is exactly the online natural gradient with γ_t = η_t, P_0 = η_0 J_0⁻¹
/// and 1/η_t = (1 − λ_t)/η_{t−1} + 1 (Ollivier 2018, the static-case theorem; see
/// ekf_natural_gradient_correspondence.hpp, and the equivalence tests). With λ = 0 and a
/// linear-Gaussian model it is the exact Bayesian posterior. Additive process noise Q is a
/// useful filter (tracking a drifting parameter) without a natural-gradient twin.
///
/// Cost per step, for an observation with r Fisher rows (r = 1 for Bernoulli, Poisson and
/// scalar Gaussian, r = k for k-dim Gaussian and k-class softmax): O(r k d) to linearize plus
/// the update, ~2d² + O(r d²) (Covariance), ~3r d² (Joseph), ~(2r+1) d² (Information) —
/// O(d²) per scalar observation, never a d×d factorization. No heap allocation after the
/// first step. Parameters θ stay in the caller's storage.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/gaussian_belief.hpp"
#include "kfopt/filter/kalman_update.hpp"
#include "kfopt/filter/observation_model.hpp"
#include "kfopt/filter/observation_step.hpp"

namespace kfopt {

/// Hyperparameters of ExtendedKalmanFilter (and of JointExtendedKalmanFilter).
template <typename Scalar>
struct ExtendedKalmanFilterHyperparameters {
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// Fading memory λ: the predict inflates the covariance, P_{t|t−1} = P_{t−1|t−1}/(1−λ_t),
  /// i.e. process noise Q_t = λ/(1−λ) P_{t−1|t−1} proportional to the posterior. Old
  /// observations are down-weighted by (1−λ) per step; the natural-gradient twin has step
  /// size η_t → λ. Range [0, 1). Default 0 (no forgetting: the exact Bayesian filter).
  Scalar fading = Scalar(0);

  /// Optional schedule λ_t = fading_schedule(t) for observation t = 1, 2, …; when set it
  /// overrides `fading`. Each value must lie in [0, 1) (HyperparameterError at that step,
  /// before anything changes). Called once per step with increasing t. Default: empty.
  std::function<Scalar(std::int64_t)> fading_schedule;

  /// Additive process noise Q (d×d, symmetric positive semi-definite), added after the
  /// fading inflation: P_{t|t−1} = P_{t−1|t−1}/(1−λ_t) + Q. A filter with Q ≠ 0 has no
  /// natural-gradient counterpart (Ollivier 2018). Requires the Covariance or Joseph form
  /// (the information form would refactor the precision, O(d³) per step). Default: empty
  /// (no process noise).
  Matrix process_noise;

  /// Update algebra: Covariance (Sherman–Morrison/Woodbury on P), Joseph (P, Joseph
  /// product, robust to rounding), Information (Cholesky factor of P⁻¹, precision never
  /// decreases). Default Covariance.
  KalmanForm form = KalmanForm::Covariance;

  /// Throws HyperparameterError naming the field. The shape of process_noise against d is
  /// checked by the filter's constructor.
  void validate() const {
    const char* alg = "kfopt::ExtendedKalmanFilter";
    detail::require_hyperparameter(
        std::isfinite(static_cast<double>(fading)) && fading >= Scalar(0) && fading < Scalar(1),
        alg, "fading", fading, "[0, 1)");
    if (process_noise.size() > 0) {
      detail::require_hyperparameter(process_noise.rows() == process_noise.cols(), alg,
                                     "process_noise", detail::shape_of(process_noise),
                                     "square d×d matrices");
      detail::require_hyperparameter(process_noise.allFinite(), alg, "process_noise",
                                     "(holds NaN or Inf)",
                                     "finite symmetric positive semi-definite matrices");
      detail::require_hyperparameter(detail::is_symmetric(process_noise), alg, "process_noise",
                                     "(not symmetric)",
                                     "symmetric positive semi-definite matrices");
      const bool psd = detail::is_positive_semidefinite(process_noise);
      detail::require_hyperparameter(psd, alg, "process_noise", "(indefinite)",
                                     "symmetric positive semi-definite matrices");
      detail::require_hyperparameter(form != KalmanForm::Information, alg, "form",
                                     to_string(form),
                                     "{covariance, joseph} when process_noise is set");
    }
  }

  /// λ_t for observation t ≥ 1 (from the schedule if set), checked to lie in [0, 1).
  Scalar fading_at(std::int64_t t) const {
    if (!fading_schedule) return fading;
    const Scalar value = fading_schedule(t);
    if (!(std::isfinite(static_cast<double>(value)) && value >= Scalar(0) && value < Scalar(1))) {
      std::ostringstream os;
      os << "kfopt::ExtendedKalmanFilter: hyperparameter fading_schedule(" << t << ") = " << value
         << " is outside [0, 1)";
      throw HyperparameterError(os.str());
    }
    return value;
  }
};

/// State of ExtendedKalmanFilter: the belief's covariance and the counters. The mean is the
/// caller's θ.
template <typename Scalar>
struct ExtendedKalmanFilterState {
  BeliefCovariance<Scalar> covariance;  ///< P_{t|t} (or the Cholesky factor of P_{t|t}⁻¹)
  std::int64_t step = 0;                ///< t: observations accepted so far
  std::int64_t skipped = 0;             ///< steps rejected with a non-Success status
  Status last_status = Status::NotComputed;  ///< outcome of the last call to step()
  Scalar last_loss = Scalar(0);         ///< ℓ_t(θ_{t−1}) of the last accepted observation
};

/// Extended Kalman filter optimizer; `Model` is an observation model (observation_model.hpp).
template <typename Model>
class ExtendedKalmanFilter {
 public:
  /// The scalar type (float or double).
  using Scalar = typename Model::Scalar;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The observation type of the model.
  using Target = typename Model::Target;
  /// The hyperparameter struct of this class.
  using Hyperparameters = ExtendedKalmanFilterHyperparameters<Scalar>;
  /// The state struct of this class.
  using State = ExtendedKalmanFilterState<Scalar>;

  /// \param model               the observation model (held by value)
  /// \param initial_covariance  prior P_0 (d×d symmetric positive definite; the twin
  ///                            natural gradient has J_0 = η_0 P_0⁻¹)
  /// \param hyperparameters     validated here (HyperparameterError)
  /// Throws InvalidInputError if P_0 is not SPD. Cost O(d³) once.
  ExtendedKalmanFilter(Model model, const Eigen::Ref<const Matrix>& initial_covariance,
                       Hyperparameters hyperparameters = Hyperparameters())
      : io_(std::move(model)), hp_(std::move(hyperparameters)) {
    hp_.validate();
    const char* op = "kfopt::ExtendedKalmanFilter";
    detail::require_nonempty(op, "initial_covariance", initial_covariance);
    const Eigen::Index d = initial_covariance.rows();
    if (hp_.process_noise.size() > 0 && hp_.process_noise.rows() != d) {
      detail::require_hyperparameter(false, op, "process_noise", detail::shape_of(hp_.process_noise),
                                     "d×d with d the size of the initial covariance");
    }
    io_.allocate(d, io_.model().factor_rows());
    reset(initial_covariance);
  }

  /// One observation, given the model output z = g(θ, u) (k) and its Jacobian J = ∂z/∂θ
  /// (k×d), both evaluated at the current θ, and the target y. θ is updated in place.
  ///
  /// Returns Success; NonFiniteInput (NaN/Inf in θ, z, J or y) or NumericalIssue (the
  /// model's gradient or Fisher is undefined, e.g. mean-link p ∈ {0,1}; the update would not
  /// be finite): then θ and the state are unchanged except `skipped` and `last_status`.
  /// Throws ShapeError (shapes, named), InvalidInputError (target outside the support),
  /// HyperparameterError (a schedule value outside [0, 1)) before changing anything.
  Status step(Eigen::Ref<Vector> theta, const Eigen::Ref<const Vector>& output,
              const Eigen::Ref<const Matrix>& jacobian, const Target& y) {
    const char* op = "kfopt::ExtendedKalmanFilter::step";
    usable_.require(op);
    io_.require_shapes(op, theta, output, jacobian);
    const std::int64_t t = state_.step + 1;
    const Scalar lambda = hp_.fading_at(t);
    if (!theta.allFinite()) return detail::record_skipped_step(state_, Status::NonFiniteInput);
    Status status = io_.linearize(op, output, jacobian, y, FisherKind::Model);
    if (status != Status::Success) return detail::record_skipped_step(state_, status);
    const LinearizedObservation<Scalar>& lin = io_.linearization();
    const Scalar inflation = Scalar(1) / (Scalar(1) - lambda);
    // All or nothing: the updater refuses (Overflow) unless θ + increment is finite too.
    if (hp_.process_noise.size() > 0) {
      const Eigen::Ref<const Matrix> Q(hp_.process_noise);
      status = io_.updater().update_covariance_for(theta, state_.covariance, lin.factor_t,
                                                   lin.score, inflation, &Q);
    } else {
      status = io_.updater().update_covariance_for(theta, state_.covariance, lin.factor_t,
                                                   lin.score, inflation);
    }
    if (status != Status::Success) return detail::record_skipped_step(state_, status);
    theta += io_.updater().increment();
    state_.step = t;
    state_.last_loss = lin.loss;
    state_.last_status = Status::Success;
    return Status::Success;
  }

  /// One observation with a caller-supplied predictor, called as
  /// `predictor(const Eigen::Ref<const Vector>& theta, Eigen::Ref<Vector> z,
  ///            Eigen::Ref<Matrix> jacobian)`; it writes z (k) and ∂z/∂θ (k×d) into
  /// preallocated storage. Same contract as the other overload.
  template <typename Predictor>
  Status step(Eigen::Ref<Vector> theta, Predictor&& predictor, const Target& y) {
    usable_.require("kfopt::ExtendedKalmanFilter::step");
    io_.predict("kfopt::ExtendedKalmanFilter::step", theta, std::forward<Predictor>(predictor));
    return step(theta, io_.output(), io_.jacobian(), y);
  }

  /// Restarts from prior covariance P_0 (counters cleared).
  void reset(const Eigen::Ref<const Matrix>& initial_covariance) {
    usable_.require("kfopt::ExtendedKalmanFilter::reset");
    detail::require_shape("kfopt::ExtendedKalmanFilter::reset", "initial_covariance",
                          initial_covariance, dim(), dim());
    State fresh;
    fresh.covariance = BeliefCovariance<Scalar>::from_covariance(initial_covariance, hp_.form);
    state_ = std::move(fresh);
  }

  /// The filter state (covariance and counters).
  const State& state() const noexcept { return state_; }
  /// Restores a state (checkpoint), all or nothing. Throws ShapeError / InvalidInputError
  /// naming the entry: a covariance of the wrong shape or form, with NaN/Inf, a negative
  /// variance, not symmetric or not positive semi-definite (information form: not a lower
  /// Cholesky factor with a positive diagonal); a negative step or skip count; a non-finite
  /// last loss. Cost O(d³) (one factorization).
  void set_state(State state) {
    const char* op = "kfopt::ExtendedKalmanFilter::set_state";
    usable_.require(op);
    detail::require_restorable_belief(op, "covariance", state.covariance, dim(), hp_.form);
    detail::require_restorable_counters(op, state.step, state.skipped, state.last_loss);
    state_ = std::move(state);
  }

  /// The hyperparameters in use.
  const Hyperparameters& hyperparameters() const noexcept { return hp_; }
  /// The observation model.
  const Model& model() const noexcept { return io_.model(); }
  /// Number d of parameters.
  Eigen::Index dim() const noexcept { return io_.dim(); }
  /// Dense P_{t|t} (O(d³) in the information form).
  Matrix covariance() const { return state_.covariance.covariance(); }
  /// Dense P_{t|t}⁻¹ (O(d³) in the covariance forms).
  Matrix precision() const { return state_.covariance.precision(); }
  /// θ_t − θ_{t−1} of the last accepted step.
  const Vector& last_increment() const noexcept { return io_.updater().increment(); }
  /// The last linearized observation (Gᵀ, score, loss).
  const LinearizedObservation<Scalar>& last_linearization() const noexcept {
    return io_.linearization();
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type
  /// "kfopt::ExtendedKalmanFilter": "covariance" (P, or the Cholesky factor of P⁻¹ in the
  /// information form), "step", "skipped", "last_status", "last_loss". Hyperparameters: fading
  /// (continuous), whether a fading schedule and process noise (its size) are set, the form
  /// (structural); the schedule and the noise matrix themselves are the constructed ones.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::ExtendedKalmanFilter", state_, hp_);
  }
  /// Restores a state_dict() of an identically built filter; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    Hyperparameters h = hp_;
    detail::read_state_dict<Scalar>(*this, "kfopt::ExtendedKalmanFilter::load_state_dict", dict,
                                    load, s, h);
    set_state(std::move(s));
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, Hyperparameters& h) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    bool schedule = static_cast<bool>(h.fading_schedule);
    std::int64_t noise = h.process_noise.rows();
    io.hyperparameter("fading", h.fading, kC);
    io.hyperparameter("fading_schedule", schedule);
    io.hyperparameter("process_noise_dim", noise);
    io.hyperparameter("form", h.form);
    io.array("covariance", s.covariance.storage(),
             h.form == KalmanForm::Information ? EntryConstraint::CholeskyFactor
                                               : EntryConstraint::SymmetricPsd);
    io.integer("step", s.step);
    io.integer("skipped", s.skipped);
    io.enumeration("last_status", s.last_status, 5);
    io.real("last_loss", s.last_loss);
  }

 private:
  detail::ObservationStep<Model> io_;  // model, linearization, updater, predictor storage
  Hyperparameters hp_;
  State state_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
