#pragma once
/// \file natural_gradient_rtrl.hpp
/// \brief Online natural gradient on top of RTRL, with the hidden state corrected along the
/// RTRL tangent: the parameter-space form of the joint Kalman filter over (state, θ).
///
/// Ollivier 2018 ("Online natural gradient as a Kalman filter", arXiv:1703.00209), the
/// recurrent (state-space) case. Per step t:
///
///     s_{t|t−1} = f(s_{t−1}, θ_{t−1}, u_t),   A_t = ∂f/∂s A_{t−1} + ∂f/∂θ     (RTRL)
///     z_t = h(s_{t|t−1}, θ_{t−1}, u_t),       H_t = ∂h/∂s A_t + ∂h/∂θ
///     J_t = (1 − γ_t) J_{t−1} + γ_t H_tᵀ F_z H_t,  θ_t = θ_{t−1} − η_t J_t⁻¹ H_tᵀ ∂ℓ/∂z
///     s_t = s_{t|t−1} + A_t (θ_t − θ_{t−1})                                    (state correction)
///
/// With γ_t = η_t, J_0 = η_0 (P_0^θθ)⁻¹ and 1/η_t = (1−λ_t)/η_{t−1} + 1 this equals the joint
/// EKF (JointExtendedKalmanFilter) started from the degenerate covariance
/// [[A_0 P_0 A_0ᵀ, A_0 P_0], [P_0 A_0ᵀ, P_0]]; the tests check it.
///
/// Cost per step: O(n² d) for RTRL plus the natural-gradient step, O(r d²) (r Fisher rows of
/// the observation model) — versus O((n + d)² n + r (n + d)²) for the joint filter. The
/// step is all-or-nothing: on a non-Success status neither θ, the hidden state, the tangent
/// nor J_t changed (use `advance` to move the hidden state along an input without a target).

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/optim/kalman/online_natural_gradient.hpp"
#include "kfopt/optim/kalman/rtrl.hpp"

namespace kfopt {

/// Hyperparameters of NaturalGradientRtrl.
template <typename Scalar>
struct NaturalGradientRtrlHyperparameters {
  /// Rates, Fisher kind and update form of the natural-gradient step (see
  /// OnlineNaturalGradientHyperparameters; natural_gradient_twin() gives the EKF-equivalent
  /// ones).
  OnlineNaturalGradientHyperparameters<Scalar> natural_gradient;
  /// Correct the hidden state along the tangent after each parameter step,
  /// s_t = s_{t|t−1} + A_t (θ_t − θ_{t−1}). Default true (required for the joint-EKF
  /// equivalence); false gives plain RTRL with a natural-gradient step.
  bool correct_state = true;

  /// Throws HyperparameterError if a field is out of its range.
  void validate() const { natural_gradient.validate(); }
};

/// State of NaturalGradientRtrl.
template <typename Scalar>
struct NaturalGradientRtrlState {
  RtrlState<Scalar> recurrent;                         ///< s_t and A_t
  OnlineNaturalGradientState<Scalar> natural_gradient; ///< J_t and its counters
  std::int64_t skipped = 0;                            ///< steps rejected (any cause)
  /// Status of the last step.
  Status last_status = Status::NotComputed;
};

/// Natural gradient on RTRL; `RecurrentModel` as in tanh_rnn_cell.hpp, `ObservationModel`
/// as in observation_model.hpp (it receives the recurrent model's output z_t).
template <typename RecurrentModel, typename ObservationModel>
class NaturalGradientRtrl {
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
  using Hyperparameters = NaturalGradientRtrlHyperparameters<Scalar>;
  /// The state struct of this class.
  using State = NaturalGradientRtrlState<Scalar>;

  /// \param recurrent        the recurrent model (held by value)
  /// \param observation      the observation model (held by value)
  /// \param initial_state    s_0 (n)
  /// \param initial_fisher   J_0 (d×d SPD)
  /// \param initial_tangent  A_0 (n×d); empty means zero
  /// \param hyperparameters  validated here (HyperparameterError)
  /// Throws ShapeError if the recurrent model's output size differs from the observation
  /// model's, InvalidInputError / HyperparameterError as the parts do.
  NaturalGradientRtrl(RecurrentModel recurrent, ObservationModel observation,
                      const Eigen::Ref<const Vector>& initial_state,
                      const Eigen::Ref<const Matrix>& initial_fisher,
                      Hyperparameters hyperparameters = Hyperparameters(),
                      const Eigen::Ref<const Matrix>& initial_tangent = Matrix())
      : hp_((hyperparameters.validate(), std::move(hyperparameters))),
        rtrl_(std::move(recurrent), initial_state, initial_tangent),
        ng_(std::move(observation), initial_fisher, hp_.natural_gradient) {
    const char* op = "kfopt::NaturalGradientRtrl";
    const auto& rnn = rtrl_.model();
    if (rnn.output_dim() != ng_.model().output_dim()) {
      throw ShapeError(std::string(op) + ": the recurrent model outputs " +
                       std::to_string(rnn.output_dim()) + " values but the observation model "
                       "takes " + std::to_string(ng_.model().output_dim()));
    }
    detail::require_shape(op, "initial_fisher", initial_fisher, rnn.param_dim(), rnn.param_dim());
    z_.resize(rnn.output_dim());
    H_.resize(rnn.output_dim(), rnn.param_dim());
  }

  /// One time step with input u_t and target y_t; θ (d) is updated in place. Returns
  /// Success, or NonFiniteInput / NumericalIssue with everything unchanged (skipped
  /// counted). Shape, target and schedule errors throw before any change.
  Status step(Eigen::Ref<Vector> theta, const Eigen::Ref<const Vector>& u, const Target& y) {
    usable_.require("kfopt::NaturalGradientRtrl::step");
    Status status = rtrl_.propagate(theta, u);
    if (status == Status::Success) status = rtrl_.output(theta, u, z_, H_);
    if (status == Status::Success) status = ng_.step(theta, z_, H_, y);
    if (status != Status::Success) {
      ++skipped_;
      last_status_ = status;
      return status;
    }
    // δθ is finite (the natural-gradient step checked θ + δθ); the corrected state can only
    // fail to be finite for a tangent of ~1e300: then the uncorrected state is kept.
    if (!hp_.correct_state || rtrl_.commit(ng_.last_increment()) != Status::Success) {
      rtrl_.commit();
    }
    last_status_ = Status::Success;
    return Status::Success;
  }

  /// Moves the hidden state and tangent along input u_t without a target (θ, J unchanged).
  Status advance(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u) {
    usable_.require("kfopt::NaturalGradientRtrl::advance");
    const Status status = rtrl_.advance(theta, u);
    if (status != Status::Success) ++skipped_;
    last_status_ = status;
    return status;
  }

  /// A copy of the full state (for inspection and checkpoints).
  State state() const {
    State s;
    s.recurrent = rtrl_.state();
    s.natural_gradient = ng_.state();
    s.skipped = skipped_;
    s.last_status = last_status_;
    return s;
  }
  /// Restores a state, all or nothing: every part is checked (as Rtrl::set_state and
  /// OnlineNaturalGradient::set_state do, and `skipped` >= 0) before any is restored;
  /// throws ShapeError / InvalidInputError naming the entry.
  void set_state(State state) {
    const char* op = "kfopt::NaturalGradientRtrl::set_state";
    usable_.require(op);
    rtrl_.check_state(state.recurrent);
    ng_.check_state(state.natural_gradient);
    detail::require_counter(op, "skipped", state.skipped);
    rtrl_.set_state(std::move(state.recurrent));
    ng_.set_state(std::move(state.natural_gradient));
    skipped_ = state.skipped;
    last_status_ = state.last_status;
  }

  /// The hyperparameters in use.
  const Hyperparameters& hyperparameters() const noexcept { return hp_; }
  /// The current hidden state s_t (n).
  const Vector& hidden() const noexcept { return rtrl_.hidden(); }
  /// The current tangent A_t = ∂s_t/∂θ (n×d).
  const Matrix& tangent() const noexcept { return rtrl_.tangent(); }
  /// The RTRL part.
  const Rtrl<RecurrentModel>& rtrl() const noexcept { return rtrl_; }
  /// The natural-gradient part.
  const OnlineNaturalGradient<ObservationModel>& natural_gradient() const noexcept { return ng_; }
  /// Output z_t of the last step (at s_{t|t−1}, θ_{t−1}) and its RTRL Jacobian H_t.
  const Vector& last_output() const noexcept { return z_; }
  /// The Jacobian of the last step.
  const Matrix& last_jacobian() const noexcept { return H_; }
  /// Steps rejected (any cause).
  std::int64_t skipped() const noexcept { return skipped_; }


  /// The complete state as a StateDict (core/state_dict.hpp), type
  /// "kfopt::NaturalGradientRtrl": Rtrl's entries under "recurrent/", OnlineNaturalGradient's
  /// under "natural_gradient/" (its hyperparameters as "natural_gradient.<name>"), "skipped",
  /// "last_status"; hyperparameter correct_state (structural).
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::NaturalGradientRtrl", state(), hp_);
  }
  /// Restores a state_dict() of an identically built optimizer; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state();
    Hyperparameters h = hp_;
    detail::read_state_dict<Scalar>(*this, "kfopt::NaturalGradientRtrl::load_state_dict", dict,
                                    load, s, h);
    set_state(std::move(s));
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, Hyperparameters& h) const {
    io.hyperparameter("correct_state", h.correct_state);
    io.enter("recurrent");
    rtrl_.state_fields(io, s.recurrent);
    io.leave();
    io.enter("natural_gradient");
    ng_.state_fields(io, s.natural_gradient, h.natural_gradient);
    io.leave();
    io.integer("skipped", s.skipped);
    io.enumeration("last_status", s.last_status, 5);
  }

 private:
  Hyperparameters hp_;
  Rtrl<RecurrentModel> rtrl_;
  OnlineNaturalGradient<ObservationModel> ng_;
  std::int64_t skipped_ = 0;
  Status last_status_ = Status::NotComputed;
  Vector z_;
  Matrix H_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
