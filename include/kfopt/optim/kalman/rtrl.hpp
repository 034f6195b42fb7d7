#pragma once
/// \file rtrl.hpp
/// \brief Real-time recurrent learning: the hidden state s_t of a recurrent model and its
/// tangent A_t = ∂s_t/∂θ, carried forward online.
///
///     A_t = (∂f/∂s) A_{t−1} + ∂f/∂θ,        H_t = dz_t/dθ = (∂h/∂s) A_t + ∂h/∂θ
///
/// (Ollivier 2018, arXiv:1703.00209, the recurrent (state-space) case). H_t is the total
/// derivative of the output with respect to the parameters through the whole past, which
/// is what an online optimizer needs in place of the static Jacobian.
///
/// Two-phase, so that a step can be all-or-nothing: `propagate` computes the candidate
/// (s_t, A_t) without committing, `output` evaluates z_t and H_t there, `commit` keeps them
/// (optionally correcting the state along the tangent, s_t ← s_t + A_t δθ). Cost per step:
/// O(n² d) for the tangent (n×n times n×d) plus the model's Jacobians; O(n d) memory.
/// `RecurrentModel` follows the concept in tanh_rnn_cell.hpp.

#include <Eigen/Core>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/tiled_product.hpp"

namespace kfopt {

/// State of Rtrl: the hidden state and its tangent.
template <typename Scalar>
struct RtrlState {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> hidden;                 ///< s_t (n)
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> tangent;   ///< A_t = ∂s_t/∂θ (n×d)
};

/// Real-time recurrent learning over a `RecurrentModel`.
template <typename RecurrentModel>
class Rtrl {
 public:
  /// The scalar type (float or double).
  using Scalar = typename RecurrentModel::Scalar;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The state struct of this class.
  using State = RtrlState<Scalar>;

  /// \param model            the recurrent model (held by value)
  /// \param initial_state    s_0 (n), finite
  /// \param initial_tangent  A_0 (n×d); empty means zero (s_0 does not depend on θ)
  Rtrl(RecurrentModel model, const Eigen::Ref<const Vector>& initial_state,
       const Eigen::Ref<const Matrix>& initial_tangent = Matrix())
      : model_(std::move(model)),
        n_(model_.state_dim()),
        d_(model_.param_dim()),
        k_(model_.output_dim()) {
    reset(initial_state, initial_tangent);
    s_new_.resize(n_);
    corrected_.resize(n_);
    A_new_.resize(n_, d_);
    Fs_.resize(n_, n_);
    Ftheta_.resize(n_, d_);
    Hs_.resize(k_, n_);
    Htheta_.resize(k_, d_);
  }

  /// Restarts from s_0 and A_0 (empty A_0: zero).
  void reset(const Eigen::Ref<const Vector>& initial_state,
             const Eigen::Ref<const Matrix>& initial_tangent = Matrix()) {
    const char* op = "kfopt::Rtrl::reset";
    usable_.require(op);
    detail::require_shape(op, "initial_state", initial_state, n_, 1);
    detail::require_finite(op, "initial_state", initial_state);
    State fresh;
    fresh.hidden = initial_state;
    if (initial_tangent.size() == 0) {
      fresh.tangent = Matrix::Zero(n_, d_);
    } else {
      detail::require_shape(op, "initial_tangent", initial_tangent, n_, d_);
      detail::require_finite(op, "initial_tangent", initial_tangent);
      fresh.tangent = initial_tangent;
    }
    state_ = std::move(fresh);
    pending_ = false;
  }

  /// Candidate s_t = f(s_{t−1}, θ, u_t) and A_t, not committed. Returns NonFiniteInput for
  /// NaN/Inf in θ or u (nothing computed), NumericalIssue if f or its Jacobians are not
  /// finite. Throws ShapeError on shapes. Cost O(n² d).
  Status propagate(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u) {
    const char* op = "kfopt::Rtrl::propagate";
    usable_.require(op);
    detail::require_shape(op, "theta", theta, d_, 1);
    detail::require_shape(op, "input u", u, model_.input_dim(), 1);
    pending_ = false;
    if (!theta.allFinite() || !u.allFinite()) return Status::NonFiniteInput;
    model_.transition(state_.hidden, theta, u, s_new_, Fs_, Ftheta_);
    if (!s_new_.allFinite() || !Fs_.allFinite() || !Ftheta_.allFinite()) {
      return Status::NumericalIssue;
    }
    A_new_ = Ftheta_;
    detail::tiled_multiply_add(A_new_, Fs_, state_.tangent, Scalar(1));
    if (!A_new_.allFinite()) return Status::NumericalIssue;
    pending_ = true;
    return Status::Success;
  }

  /// At the candidate state: z_t = h(s_t, θ, u_t) (k) and H_t = ∂h/∂s A_t + ∂h/∂θ (k×d).
  /// NumericalIssue if not finite. Throws InvalidInputError if no candidate is pending.
  Status output(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u,
                Eigen::Ref<Vector> z, Eigen::Ref<Matrix> H) {
    const char* op = "kfopt::Rtrl::output";
    require_pending(op);
    detail::require_shape(op, "z", z, k_, 1);
    detail::require_shape(op, "H", H, k_, d_);
    model_.observe(s_new_, theta, u, z, Hs_, Htheta_);
    H = Htheta_;
    detail::tiled_multiply_add(H, Hs_, A_new_, Scalar(1));
    return z.allFinite() && H.allFinite() ? Status::Success : Status::NumericalIssue;
  }

  /// Keeps the candidate: s_t, A_t become the state.
  void commit() {
    require_pending("kfopt::Rtrl::commit");
    finish();
  }

  /// Keeps the candidate with the state corrected along the tangent, s_t ← s_t + A_t δθ
  /// (the joint-filter state update after a parameter change δθ). O(n d). Returns
  /// NonFiniteInput for NaN/Inf in δθ and Overflow if the corrected state would not be
  /// finite: then nothing changes and the candidate stays pending (commit it with or
  /// without another correction). Throws ShapeError for a wrong size, InvalidInputError
  /// when no candidate is pending.
  Status commit(const Eigen::Ref<const Vector>& delta_theta) {
    const char* op = "kfopt::Rtrl::commit";
    require_pending(op);
    detail::require_shape(op, "delta_theta", delta_theta, d_, 1);
    if (!detail::all_finite(delta_theta)) return Status::NonFiniteInput;
    corrected_.noalias() = A_new_ * delta_theta;
    corrected_ += s_new_;
    if (!detail::all_finite(corrected_)) return Status::Overflow;
    s_new_.swap(corrected_);
    finish();
    return Status::Success;
  }

  /// propagate + commit (no observation: e.g. a missing target, or a warm-up input).
  Status advance(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& u) {
    const Status status = propagate(theta, u);
    if (status == Status::Success) finish();
    return status;
  }

  /// The hidden state and tangent.
  const State& state() const noexcept { return state_; }
  /// Restores a state (checkpoint), all or nothing; throws ShapeError on a shape mismatch,
  /// InvalidInputError for NaN/Inf in the hidden state or the tangent.
  void set_state(State state) {
    check_state(state);
    state_ = std::move(state);
    pending_ = false;
  }
  /// The checks of set_state without restoring.
  void check_state(const State& state) const {
    const char* op = "kfopt::Rtrl::set_state";
    usable_.require(op);
    detail::require_shape(op, "hidden", state.hidden, n_, 1);
    detail::require_shape(op, "tangent", state.tangent, n_, d_);
    detail::require_finite(op, "hidden", state.hidden);
    detail::require_finite(op, "tangent", state.tangent);
  }
  /// The current hidden state s_t (n).
  const Vector& hidden() const noexcept { return state_.hidden; }
  /// The current tangent A_t = ∂s_t/∂θ (n×d).
  const Matrix& tangent() const noexcept { return state_.tangent; }
  /// The candidate s_t of the last propagate(), not yet committed (n).
  const Vector& pending_hidden() const noexcept { return s_new_; }
  /// The candidate A_t of the last propagate(), not yet committed (n×d).
  const Matrix& pending_tangent() const noexcept { return A_new_; }
  /// The recurrent model.
  const RecurrentModel& model() const noexcept { return model_; }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::Rtrl": "hidden"
  /// (s_t) and "tangent" (A_t). A propagated step not yet committed is not part of it (a
  /// checkpoint is taken between steps).
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::Rtrl", state_);
  }
  /// Restores a state_dict() of an identically built Rtrl; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    detail::read_state_dict<Scalar>(*this, "kfopt::Rtrl::load_state_dict", dict, load, s);
    set_state(std::move(s));
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s) const {
    io.array("hidden", s.hidden);
    io.array("tangent", s.tangent);
  }

 private:
  void require_pending(const char* op) const {
    usable_.require(op);
    if (!pending_) {
      throw InvalidInputError(std::string(op) +
                              ": no propagated state (call propagate first, and check that it "
                              "returned Success)");
    }
  }
  void finish() {
    state_.hidden.swap(s_new_);
    state_.tangent.swap(A_new_);
    pending_ = false;
  }

  RecurrentModel model_;
  Eigen::Index n_, d_, k_;
  State state_;
  bool pending_ = false;
  Vector s_new_, corrected_;
  Matrix A_new_, Fs_, Ftheta_, Hs_, Htheta_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
