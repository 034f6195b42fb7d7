#pragma once
/// \file online_natural_gradient.hpp
/// \brief Online natural gradient with a running-average Fisher matrix.
///
/// Ollivier 2018, "Online natural gradient as a Kalman filter" (arXiv:1703.00209), the
/// online natural gradient with a running-average Fisher. For observation t = 1, 2, … with model output z_t, Jacobian J_t = ∂z/∂θ and
/// target y_t:
///
///     J_t = (1 − γ_t) J_{t−1} + γ_t F_t            (Fisher rate γ_t)
///     θ_t = θ_{t−1} − η_t J_t⁻¹ ∇ℓ_t(y_t)          (step size η_t)
///
/// with F_t the true (model) Fisher J_tᵀ F_z J_t of the observation model — it does not
/// depend on y_t — or, optionally, the empirical Fisher ∇ℓ ∇ℓᵀ. With γ_t = η_t and the
/// model Fisher this is exactly the extended Kalman filter with P_t = η_t J_t⁻¹ (the
/// static-case theorem of Ollivier 2018; see ekf_natural_gradient_correspondence.hpp). A
/// slower Fisher average with an independent step size is still a natural gradient, but
/// not an EKF; the empirical Fisher is neither.
///
/// J_t is kept as a `BeliefCovariance` "precision": J_t⁻¹ itself (Covariance and Joseph
/// forms, Sherman–Morrison/Woodbury) or the Cholesky factor of J_t (Information form, rank-1
/// updates of the factor). Cost per step: the same as ExtendedKalmanFilter — O(d²) per
/// scalar observation, O(k d²) for k Fisher rows, never a d×d factorization; no heap
/// allocation after the first step. Parameters θ stay in the caller's storage.

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

/// Hyperparameters of OnlineNaturalGradient.
template <typename Scalar>
struct OnlineNaturalGradientHyperparameters {
  /// Step size η (learning rate) when no schedule is set: θ_t = θ_{t−1} − η_t J_t⁻¹ ∇ℓ_t.
  /// Range (0, 1) while the Fisher rate is tied to it (γ_t = η_t), (0, ∞) otherwise.
  /// Default 0.01 (the twin of an EKF with fading memory λ = 0.01).
  Scalar step_size = Scalar(0.01);

  /// Optional schedule η_t = step_size_schedule(t) for t = 1, 2, …, overriding `step_size`
  /// (e.g. η_t = 1/(t+1), the twin of the EKF without forgetting: harmonic_step_sizes()).
  /// Called once per step with increasing t. Values are checked at each step.
  std::function<Scalar(std::int64_t)> step_size_schedule;

  /// γ_t = η_t (default true): the choice under which the natural gradient is an EKF.
  bool fisher_rate_is_step_size = true;

  /// Fisher rate γ when not tied to the step size and no schedule is set:
  /// J_t = (1 − γ_t) J_{t−1} + γ_t F_t. Range (0, 1). Default 0.01.
  Scalar fisher_rate = Scalar(0.01);

  /// Optional schedule γ_t = fisher_rate_schedule(t) (used when not tied). Range (0, 1).
  std::function<Scalar(std::int64_t)> fisher_rate_schedule;

  /// Model (true) Fisher, default, or the empirical Fisher of the observed targets.
  FisherKind fisher = FisherKind::Model;

  /// Storage and update algebra of J_t (see KalmanForm). Default Covariance (J_t⁻¹ stored).
  KalmanForm form = KalmanForm::Covariance;

  /// Throws HyperparameterError naming the field.
  void validate() const {
    const char* alg = "kfopt::OnlineNaturalGradient";
    const bool finite_eta = std::isfinite(static_cast<double>(step_size));
    if (fisher_rate_is_step_size) {
      detail::require_hyperparameter(finite_eta && step_size > Scalar(0) && step_size < Scalar(1),
                                     alg, "step_size", step_size,
                                     "(0, 1) (it is also the Fisher rate)");
    } else {
      detail::require_hyperparameter(finite_eta && step_size > Scalar(0), alg, "step_size",
                                     step_size, "(0, inf)");
      detail::require_hyperparameter(std::isfinite(static_cast<double>(fisher_rate)) &&
                                         fisher_rate > Scalar(0) && fisher_rate < Scalar(1),
                                     alg, "fisher_rate", fisher_rate, "(0, 1)");
    }
  }

  /// η_t for observation t ≥ 1, checked.
  Scalar step_size_at(std::int64_t t) const {
    const Scalar eta = step_size_schedule ? step_size_schedule(t) : step_size;
    const bool ok = std::isfinite(static_cast<double>(eta)) && eta > Scalar(0) &&
                    (!fisher_rate_is_step_size || eta < Scalar(1));
    if (!ok) fail("step_size_schedule", t, eta, fisher_rate_is_step_size ? "(0, 1)" : "(0, inf)");
    return eta;
  }

  /// γ_t for observation t ≥ 1 given η_t, checked.
  Scalar fisher_rate_at(std::int64_t t, Scalar eta) const {
    if (fisher_rate_is_step_size) return eta;
    const Scalar gamma = fisher_rate_schedule ? fisher_rate_schedule(t) : fisher_rate;
    if (!(std::isfinite(static_cast<double>(gamma)) && gamma > Scalar(0) && gamma < Scalar(1))) {
      fail("fisher_rate_schedule", t, gamma, "(0, 1)");
    }
    return gamma;
  }

 private:
  static void fail(const char* field, std::int64_t t, Scalar value, const char* range) {
    std::ostringstream os;
    os << "kfopt::OnlineNaturalGradient: hyperparameter " << field << "(" << t << ") = " << value
       << " is outside " << range;
    throw HyperparameterError(os.str());
  }
};

/// State of OnlineNaturalGradient.
template <typename Scalar>
struct OnlineNaturalGradientState {
  /// J_t, stored as the precision of a Gaussian belief: J_t⁻¹ (Covariance/Joseph form) or the
  /// lower Cholesky factor of J_t (Information form).
  BeliefCovariance<Scalar> fisher;
  std::int64_t step = 0;                      ///< t: observations accepted so far
  std::int64_t skipped = 0;                   ///< steps rejected with a non-Success status
  Status last_status = Status::NotComputed;   ///< outcome of the last call to step()
  Scalar last_loss = Scalar(0);               ///< ℓ_t(θ_{t−1}) of the last accepted step
  Scalar last_step_size = Scalar(0);          ///< η_t of the last accepted step
  Scalar last_fisher_rate = Scalar(0);        ///< γ_t of the last accepted step
};

/// Online natural gradient optimizer; `Model` is an observation model.
template <typename Model>
class OnlineNaturalGradient {
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
  using Hyperparameters = OnlineNaturalGradientHyperparameters<Scalar>;
  /// The state struct of this class.
  using State = OnlineNaturalGradientState<Scalar>;

  /// \param model           the observation model (held by value)
  /// \param initial_fisher  J_0 (d×d symmetric positive definite): the Fisher
  ///                        initialization, i.e. the prior precision up to η_0
  /// \param hyperparameters validated here (HyperparameterError)
  /// Throws InvalidInputError if J_0 is not SPD, HyperparameterError for bad
  /// hyperparameters. Cost O(d³) once.
  OnlineNaturalGradient(Model model, const Eigen::Ref<const Matrix>& initial_fisher,
                        Hyperparameters hyperparameters = Hyperparameters())
      : io_(std::move(model)), hp_(std::move(hyperparameters)) {
    hp_.validate();
    detail::require_nonempty("kfopt::OnlineNaturalGradient", "initial_fisher", initial_fisher);
    const Eigen::Index d = initial_fisher.rows();
    const Eigen::Index r = hp_.fisher == FisherKind::Model ? io_.model().factor_rows() : 1;
    io_.allocate(d, r);
    reset(initial_fisher);
    factor_.resize(d, r);
    score_.resize(d);
  }

  /// One observation, given z = g(θ, u) (k) and J = ∂z/∂θ (k×d) at the current θ, and y.
  /// θ is updated in place. Same error contract as ExtendedKalmanFilter::step: shape,
  /// target and schedule errors throw before anything changes; NonFiniteInput /
  /// NumericalIssue skip the step (θ and J_t unchanged, `skipped` incremented).
  Status step(Eigen::Ref<Vector> theta, const Eigen::Ref<const Vector>& output,
              const Eigen::Ref<const Matrix>& jacobian, const Target& y) {
    const char* op = "kfopt::OnlineNaturalGradient::step";
    usable_.require(op);
    io_.require_shapes(op, theta, output, jacobian);
    const std::int64_t t = state_.step + 1;
    const Scalar eta = hp_.step_size_at(t);
    const Scalar gamma = hp_.fisher_rate_at(t, eta);
    if (!theta.allFinite()) return detail::record_skipped_step(state_, Status::NonFiniteInput);
    Status status = io_.linearize(op, output, jacobian, y, hp_.fisher);
    if (status != Status::Success) return detail::record_skipped_step(state_, status);
    // J_t = (1−γ) J_{t−1} + γ Gᵀ G  ⇔  J_t⁻¹ = ((J_{t−1}⁻¹/(1−γ))⁻¹ + (√γ G)ᵀ(√γ G))⁻¹,
    // and θ_t − θ_{t−1} = J_t⁻¹ (η g) with g = −∇ℓ.
    const LinearizedObservation<Scalar>& lin = io_.linearization();
    factor_ = lin.factor_t * std::sqrt(gamma);
    score_ = lin.score * eta;
    // All or nothing: the updater refuses (Overflow) unless θ + increment is finite too.
    status = io_.updater().update_covariance_for(theta, state_.fisher, factor_, score_,
                                                 Scalar(1) / (Scalar(1) - gamma));
    if (status != Status::Success) return detail::record_skipped_step(state_, status);
    theta += io_.updater().increment();
    state_.step = t;
    state_.last_loss = lin.loss;
    state_.last_step_size = eta;
    state_.last_fisher_rate = gamma;
    state_.last_status = Status::Success;
    return Status::Success;
  }

  /// One observation with a caller-supplied predictor
  /// `predictor(const Eigen::Ref<const Vector>& theta, Eigen::Ref<Vector> z,
  ///            Eigen::Ref<Matrix> jacobian)`.
  template <typename Predictor>
  Status step(Eigen::Ref<Vector> theta, Predictor&& predictor, const Target& y) {
    usable_.require("kfopt::OnlineNaturalGradient::step");
    io_.predict("kfopt::OnlineNaturalGradient::step", theta, std::forward<Predictor>(predictor));
    return step(theta, io_.output(), io_.jacobian(), y);
  }

  /// Restarts from the Fisher initialization J_0 (counters cleared).
  void reset(const Eigen::Ref<const Matrix>& initial_fisher) {
    usable_.require("kfopt::OnlineNaturalGradient::reset");
    detail::require_shape("kfopt::OnlineNaturalGradient::reset", "initial_fisher",
                          initial_fisher, dim(), dim());
    State fresh;
    fresh.fisher = BeliefCovariance<Scalar>::from_precision(initial_fisher, hp_.form);
    state_ = std::move(fresh);
  }

  /// The state (Fisher estimate and counters).
  const State& state() const noexcept { return state_; }
  /// Restores a state (checkpoint), all or nothing: throws ShapeError / InvalidInputError
  /// naming the entry, as ExtendedKalmanFilter::set_state does for its covariance (here J_t⁻¹
  /// or the Cholesky factor of J_t), and for a non-finite or negative last step size or
  /// Fisher rate. Cost O(d³).
  void set_state(State state) {
    check_state(state);
    state_ = std::move(state);
  }

  /// The checks of set_state without restoring (for composite optimizers that restore
  /// several parts all or nothing).
  void check_state(const State& state) const {
    const char* op = "kfopt::OnlineNaturalGradient::set_state";
    usable_.require(op);
    detail::require_restorable_belief(op, "fisher", state.fisher, dim(), hp_.form);
    detail::require_restorable_counters(op, state.step, state.skipped, state.last_loss);
    if (!(std::isfinite(static_cast<double>(state.last_step_size)) &&
          state.last_step_size >= Scalar(0) &&
          std::isfinite(static_cast<double>(state.last_fisher_rate)) &&
          state.last_fisher_rate >= Scalar(0) && state.last_fisher_rate < Scalar(1))) {
      throw InvalidInputError(std::string(op) +
                              ": last_step_size must be finite and >= 0, last_fisher_rate in "
                              "[0, 1)");
    }
  }

  /// The hyperparameters in use.
  const Hyperparameters& hyperparameters() const noexcept { return hp_; }
  /// The observation model.
  const Model& model() const noexcept { return io_.model(); }
  /// Number d of parameters.
  Eigen::Index dim() const noexcept { return io_.dim(); }
  /// Dense J_t (O(d³): an inversion in the covariance forms, L Lᵀ in the information form).
  Matrix fisher() const { return state_.fisher.precision(); }
  /// Dense J_t⁻¹ (free in the covariance forms, O(d³) in the information form).
  Matrix inverse_fisher() const { return state_.fisher.covariance(); }
  /// θ_t − θ_{t−1} of the last accepted step.
  const Vector& last_increment() const noexcept { return io_.updater().increment(); }
  /// The last linearized observation (unscaled Gᵀ, score = −∇ℓ, loss).
  const LinearizedObservation<Scalar>& last_linearization() const noexcept {
    return io_.linearization();
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type
  /// "kfopt::OnlineNaturalGradient": "fisher" (J⁻¹, or the Cholesky factor of J in the
  /// information form), "step", "skipped", "last_status", "last_loss", "last_step_size",
  /// "last_fisher_rate". Hyperparameters: step_size and fisher_rate (continuous), whether
  /// schedules are set, fisher_rate_is_step_size, the Fisher kind and the form (structural).
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::OnlineNaturalGradient", state_, hp_);
  }
  /// Restores a state_dict() of an identically built optimizer; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    Hyperparameters h = hp_;
    detail::read_state_dict<Scalar>(*this, "kfopt::OnlineNaturalGradient::load_state_dict", dict,
                                    load, s, h);
    set_state(std::move(s));
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, Hyperparameters& h) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    bool eta_schedule = static_cast<bool>(h.step_size_schedule);
    bool gamma_schedule = static_cast<bool>(h.fisher_rate_schedule);
    io.hyperparameter("step_size", h.step_size, kC);
    io.hyperparameter("step_size_schedule", eta_schedule);
    io.hyperparameter("fisher_rate_is_step_size", h.fisher_rate_is_step_size);
    io.hyperparameter("fisher_rate", h.fisher_rate, kC);
    io.hyperparameter("fisher_rate_schedule", gamma_schedule);
    io.hyperparameter("fisher", h.fisher);
    io.hyperparameter("form", h.form);
    io.array("fisher", s.fisher.storage(),
             h.form == KalmanForm::Information ? EntryConstraint::CholeskyFactor
                                               : EntryConstraint::SymmetricPsd);
    io.integer("step", s.step);
    io.integer("skipped", s.skipped);
    io.enumeration("last_status", s.last_status, 5);
    io.real("last_loss", s.last_loss);
    io.real("last_step_size", s.last_step_size);
    io.real("last_fisher_rate", s.last_fisher_rate);
  }

 private:
  detail::ObservationStep<Model> io_;  // model, linearization, updater, predictor storage
  Hyperparameters hp_;
  State state_;
  Matrix factor_;  // √γ_t Gᵀ
  Vector score_;   // η_t (−∇ℓ)
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
