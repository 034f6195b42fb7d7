#pragma once
/// \file joint_extended_kalman_filter.hpp
/// \brief Extended Kalman filter over the joint vector x = (s, θ) of a recurrent model's
/// hidden state and its parameters.
///
/// Ollivier 2018 ("Online natural gradient as a Kalman filter", arXiv:1703.00209), the
/// recurrent (state-space) case: joint EKF over (s, θ) ≡ natural gradient on RTRL. The joint
/// state evolves by s_t = f(s_{t−1}, θ, u_t), θ_t = θ_{t−1}, so with F = [[∂f/∂s, ∂f/∂θ],
/// [0, I]] and the observation Jacobian [∂h/∂s, ∂h/∂θ], per step t:
///
///     predict   s_{t|t−1} = f(s_{t−1}, θ_{t−1}, u_t),   𝒫_{t|t−1} = F 𝒫 Fᵀ / (1 − λ_t) (+ Q)
///     update    the Kalman update of kalman_update.hpp on x, with the observation model
///
/// Started from the degenerate covariance 𝒫 = M P^θθ Mᵀ, M = [A; I] (helper
/// `degenerate_covariance`), the filter keeps that form with A the RTRL tangent, and its θ
/// block is the static EKF: it equals NaturalGradientRtrl (the tests check both facts).
/// A general (non-degenerate, e.g. uncertain initial state) 𝒫_0 is allowed too.
///
/// Covariance is stored as 𝒫 itself (Covariance or Joseph form; the information form is
/// rejected: a transition F 𝒫 Fᵀ in information form would cost a factorization per step).
/// Cost per step with D = n + d: the structured predict O(n D² + n² D) (only the rows of the
/// state part move), the update O(r D²), the model's Jacobians O(n d). The step is
/// all-or-nothing; θ stays in the caller's storage, the hidden state in `State`.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/gaussian_belief.hpp"
#include "kfopt/filter/kalman_update.hpp"
#include "kfopt/filter/observation_model.hpp"
#include "kfopt/filter/observation_step.hpp"
#include "kfopt/linalg/tiled_product.hpp"
#include "kfopt/optim/kalman/extended_kalman_filter.hpp"

namespace kfopt {

/// State of JointExtendedKalmanFilter.
template <typename Scalar>
struct JointExtendedKalmanFilterState {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> hidden;  ///< s_{t|t} (n)
  BeliefCovariance<Scalar> covariance;              ///< 𝒫_{t|t} over (s, θ), (n+d)×(n+d)
  std::int64_t step = 0;                            ///< observations accepted
  std::int64_t skipped = 0;                         ///< steps rejected
  /// Status of the last step.
  Status last_status = Status::NotComputed;
  Scalar last_loss = Scalar(0);                     ///< loss of the last accepted step
};

/// Joint EKF over (hidden state, parameters) of a `RecurrentModel` (tanh_rnn_cell.hpp) with
/// an `ObservationModel` (observation_model.hpp). Hyperparameters are those of
/// ExtendedKalmanFilter (fading λ_t, optional joint process noise Q (n+d)×(n+d), form).
template <typename RecurrentModel, typename ObservationModel>
class JointExtendedKalmanFilter {
 public:
  /// The scalar type (float or double).
  using Scalar = typename RecurrentModel::Scalar;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The observation type of the model.
  using Target = typename ObservationModel::Target;
  /// The hyperparameter struct of this class.
  using Hyperparameters = ExtendedKalmanFilterHyperparameters<Scalar>;
  /// The state struct of this class.
  using State = JointExtendedKalmanFilterState<Scalar>;

  /// The degenerate joint covariance [[A P Aᵀ, A P], [P Aᵀ, P]] of a state s = s(θ) with
  /// tangent A (n×d) and parameter covariance P (d×d).
  static Matrix degenerate_covariance(const Eigen::Ref<const Matrix>& A,
                                      const Eigen::Ref<const Matrix>& P) {
    const char* op = "kfopt::JointExtendedKalmanFilter::degenerate_covariance";
    detail::require_shape(op, "P", P, A.cols(), A.cols());
    const Eigen::Index n = A.rows(), d = A.cols();
    Matrix out(n + d, n + d);
    const Matrix AP = A * P;
    out.topLeftCorner(n, n) = AP * A.transpose();
    out.topRightCorner(n, d) = AP;
    out.bottomLeftCorner(d, n) = AP.transpose();
    out.bottomRightCorner(d, d) = P;
    detail::symmetrize(out);
    return out;
  }

  /// \param recurrent           the recurrent model (held by value)
  /// \param observation         the observation model (held by value)
  /// \param initial_state       s_0 (n)
  /// \param initial_covariance  𝒫_0 ((n+d)×(n+d), symmetric positive semi-definite — the
  ///                            degenerate form is singular)
  /// \param hyperparameters     validated here (HyperparameterError)
  JointExtendedKalmanFilter(RecurrentModel recurrent, ObservationModel observation,
                            const Eigen::Ref<const Vector>& initial_state,
                            const Eigen::Ref<const Matrix>& initial_covariance,
                            Hyperparameters hyperparameters = Hyperparameters())
      : rnn_(std::move(recurrent)), obs_(std::move(observation)), hp_(std::move(hyperparameters)) {
    const char* op = "kfopt::JointExtendedKalmanFilter";
    hp_.validate();
    detail::require_hyperparameter(hp_.form != KalmanForm::Information, op, "form",
                                   to_string(hp_.form), "{covariance, joseph}");
    n_ = rnn_.state_dim();
    d_ = rnn_.param_dim();
    k_ = rnn_.output_dim();
    D_ = n_ + d_;
    if (obs_.output_dim() != k_) {
      throw ShapeError(std::string(op) + ": the recurrent model outputs " + std::to_string(k_) +
                       " values but the observation model takes " +
                       std::to_string(obs_.output_dim()));
    }
    if (hp_.process_noise.size() > 0 && hp_.process_noise.rows() != D_) {
      detail::require_hyperparameter(false, op, "process_noise",
                                     detail::shape_of(hp_.process_noise), "(n+d)×(n+d)");
    }
    reset(initial_state, initial_covariance);
    s_pred_.resize(n_);
    Fs_.resize(n_, n_);
    Ftheta_.resize(n_, d_);
    T_.resize(n_, D_);
    z_.resize(k_);
    Hs_.resize(k_, n_);
    Htheta_.resize(k_, d_);
    Hjoint_.resize(k_, D_);
    updater_.reserve(D_, obs_.factor_rows());
  }

  /// Restarts from s_0 and 𝒫_0.
  void reset(const Eigen::Ref<const Vector>& initial_state,
             const Eigen::Ref<const Matrix>& initial_covariance) {
    const char* op = "kfopt::JointExtendedKalmanFilter::reset";
    usable_.require(op);
    detail::require_shape(op, "initial_state", initial_state, n_, 1);
    detail::require_finite(op, "initial_state", initial_state);
    detail::require_shape(op, "initial_covariance", initial_covariance, D_, D_);
    State fresh;
    fresh.hidden = initial_state;
    fresh.covariance =
        BeliefCovariance<Scalar>::from_covariance(initial_covariance, hp_.form, true);
    state_ = std::move(fresh);
    predicted_ = state_.covariance;
  }

  /// One time step with input u_t and target y_t; θ (d) is updated in place. Returns
  /// Success, or NonFiniteInput / NumericalIssue with θ and the state unchanged (skipped
  /// counted). Shape, target and schedule errors throw before any change.
  Status step(Eigen::Ref<Vector> theta, const Eigen::Ref<const Vector>& u, const Target& y) {
    const char* op = "kfopt::JointExtendedKalmanFilter::step";
    usable_.require(op);
    detail::require_shape(op, "theta", theta, d_, 1);
    detail::require_shape(op, "input u", u, rnn_.input_dim(), 1);
    const std::int64_t t = state_.step + 1;
    const Scalar lambda = hp_.fading_at(t);
    Status status = predict(theta, u);
    if (status != Status::Success) return skip(status);
    rnn_.observe(s_pred_, theta, u, z_, Hs_, Htheta_);
    if (!z_.allFinite() || !Hs_.allFinite() || !Htheta_.allFinite()) {
      return skip(Status::NumericalIssue);
    }
    Hjoint_.leftCols(n_) = Hs_;
    Hjoint_.rightCols(d_) = Htheta_;
    status = linearize_observation(op, obs_, z_, Hjoint_, y, FisherKind::Model, lin_);
    if (status != Status::Success) return skip(status);
    const Scalar inflation = Scalar(1) / (Scalar(1) - lambda);
    if (hp_.process_noise.size() > 0) {
      status = updater_.update_covariance(predicted_, lin_.factor_t, lin_.score, inflation,
                                          hp_.process_noise);
    } else {
      status = updater_.update_covariance(predicted_, lin_.factor_t, lin_.score, inflation);
    }
    if (status != Status::Success) return skip(status);
    const Vector& delta = updater_.increment();
    if (!detail::all_finite(s_pred_ + delta.head(n_), theta + delta.tail(d_))) {
      return skip(Status::Overflow);
    }
    // Commit.
    state_.hidden = s_pred_ + delta.head(n_);
    theta += delta.tail(d_);
    state_.covariance.storage().swap(predicted_.storage());
    state_.step = t;
    state_.last_loss = lin_.loss;
    state_.last_status = Status::Success;
    return Status::Success;
  }

  /// Predict only (no target): s ← f(s, θ, u), 𝒫 ← F 𝒫 Fᵀ (+ Q), no fading. θ unchanged.
  Status advance(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u) {
    const char* op = "kfopt::JointExtendedKalmanFilter::advance";
    usable_.require(op);
    detail::require_shape(op, "theta", theta, d_, 1);
    detail::require_shape(op, "input u", u, rnn_.input_dim(), 1);
    const Status status = predict(theta, u);
    if (status != Status::Success) return skip(status);
    if (hp_.process_noise.size() > 0) {
      predicted_.storage() += hp_.process_noise;
      detail::symmetrize(predicted_.storage());
    }
    if (!detail::all_finite(predicted_.storage())) return skip(Status::Overflow);
    state_.hidden = s_pred_;
    state_.covariance.storage().swap(predicted_.storage());
    state_.last_status = Status::Success;
    return Status::Success;
  }

  /// The filter state (hidden state, joint covariance and counters).
  const State& state() const noexcept { return state_; }
  /// Restores a state (checkpoint), all or nothing: throws ShapeError / InvalidInputError
  /// naming the entry for a wrong shape or form, NaN/Inf in the hidden state or the
  /// covariance, a covariance that is not symmetric positive semi-definite, a negative
  /// counter or a non-finite last loss. Cost O((n+d)³).
  void set_state(State state) {
    const char* op = "kfopt::JointExtendedKalmanFilter::set_state";
    usable_.require(op);
    detail::require_shape(op, "hidden", state.hidden, n_, 1);
    detail::require_finite(op, "hidden", state.hidden);
    detail::require_restorable_belief(op, "covariance", state.covariance, D_, hp_.form);
    detail::require_restorable_counters(op, state.step, state.skipped, state.last_loss);
    state_ = std::move(state);
  }

  /// The hyperparameters in use.
  const Hyperparameters& hyperparameters() const noexcept { return hp_; }
  /// The filtered hidden state s_{t|t} (n).
  const Vector& hidden() const noexcept { return state_.hidden; }
  /// 𝒫_{t|t} over (s, θ) (n+d)×(n+d): blocks [[ss, sθ], [θs, θθ]].
  const Matrix& covariance() const noexcept { return state_.covariance.storage(); }
  /// The parameter block 𝒫^θθ (a copy).
  Matrix parameter_covariance() const { return covariance().bottomRightCorner(d_, d_); }
  /// (s, θ) increment of the last accepted step.
  const Vector& last_increment() const noexcept { return updater_.increment(); }
  /// Size n of the hidden state.
  Eigen::Index state_dim() const noexcept { return n_; }
  /// Number d of parameters.
  Eigen::Index param_dim() const noexcept { return d_; }


  /// The complete state as a StateDict (core/state_dict.hpp), type
  /// "kfopt::JointExtendedKalmanFilter": "hidden" (s_t), "covariance" (the joint 𝒫 over
  /// (s, θ), positive semi-definite), "step", "skipped", "last_status", "last_loss";
  /// hyperparameters as ExtendedKalmanFilter's.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::JointExtendedKalmanFilter", state_, hp_);
  }
  /// Restores a state_dict() of an identically built filter; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    Hyperparameters h = hp_;
    detail::read_state_dict<Scalar>(*this, "kfopt::JointExtendedKalmanFilter::load_state_dict",
                                    dict, load, s, h);
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
    io.array("hidden", s.hidden);
    io.array("covariance", s.covariance.storage(), EntryConstraint::SymmetricPsd);
    io.integer("step", s.step);
    io.integer("skipped", s.skipped);
    io.enumeration("last_status", s.last_status, 5);
    io.real("last_loss", s.last_loss);
  }

 private:
  Status skip(Status status) {
    ++state_.skipped;
    state_.last_status = status;
    return status;
  }

  /// s_pred = f(s, θ, u) and 𝒫_pred = F 𝒫 Fᵀ into the workspace; only the rows and columns
  /// of the state part change: T = [F_s F_θ] 𝒫 (n×D), 𝒫_pred = [[T [F_s F_θ]ᵀ, T_θ], [T_θᵀ, 𝒫_θθ]].
  Status predict(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u) {
    if (!theta.allFinite() || !u.allFinite()) return Status::NonFiniteInput;
    rnn_.transition(state_.hidden, theta, u, s_pred_, Fs_, Ftheta_);
    if (!s_pred_.allFinite() || !Fs_.allFinite() || !Ftheta_.allFinite()) {
      return Status::NumericalIssue;
    }
    const Matrix& P = state_.covariance.storage();
    Matrix& Pn = predicted_.storage();
    T_.setZero();
    detail::tiled_multiply_add(T_, Fs_, P.topRows(n_), Scalar(1));
    detail::tiled_multiply_add(T_, Ftheta_, P.bottomRows(d_), Scalar(1));
    Pn.bottomRightCorner(d_, d_) = P.bottomRightCorner(d_, d_);
    Pn.topRightCorner(n_, d_) = T_.rightCols(d_);
    Pn.bottomLeftCorner(d_, n_) = T_.rightCols(d_).transpose();
    Pn.topLeftCorner(n_, n_).setZero();
    detail::tiled_multiply_add(Pn.topLeftCorner(n_, n_), T_.leftCols(n_), Fs_.transpose(), Scalar(1));
    detail::tiled_multiply_add(Pn.topLeftCorner(n_, n_), T_.rightCols(d_), Ftheta_.transpose(),
                               Scalar(1));
    for (Eigen::Index j = 0; j < n_; ++j) {
      for (Eigen::Index i = j + 1; i < n_; ++i) {
        const Scalar v = Scalar(0.5) * (Pn(i, j) + Pn(j, i));
        Pn(i, j) = v;
        Pn(j, i) = v;
      }
    }
    if (!Pn.topRows(n_).allFinite()) return Status::NumericalIssue;
    return Status::Success;
  }

  RecurrentModel rnn_;
  ObservationModel obs_;
  Hyperparameters hp_;
  Eigen::Index n_ = 0, d_ = 0, k_ = 0, D_ = 0;
  State state_;
  BeliefCovariance<Scalar> predicted_;
  KalmanUpdater<Scalar> updater_;
  LinearizedObservation<Scalar> lin_;
  Vector s_pred_, z_;
  Matrix Fs_, Ftheta_, T_, Hs_, Htheta_, Hjoint_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
