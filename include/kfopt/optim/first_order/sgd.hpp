#pragma once
/// \file sgd.hpp
/// \brief Stochastic gradient descent with momentum, Nesterov momentum and weight decay,
/// with the semantics of `torch.optim.SGD`.
///
/// Per parameter p with gradient ∇ (Sutskever et al. 2013 in PyTorch's formulation):
///
///     g  = ∇ + wd · p
///     b  = g                          (first step)
///     b  = μ b + (1 − τ) g            (later steps; τ = dampening)
///     d  = g + μ b  (Nesterov)   or   d = b      (μ > 0)   or   d = g   (μ = 0)
///     p ← p − η d
///
/// Cost per step: a few passes over the parameters, no allocation.

#include <cmath>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/schedule.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Hyperparameters of Sgd.
struct SgdOptions {
  /// Learning rate η > 0. Default 0.01.
  double learning_rate = 0.01;
  /// Momentum μ ∈ [0, 1). Default 0 (plain SGD).
  double momentum = 0.0;
  /// Dampening τ ∈ [0, 1] of the gradient entering the momentum buffer. Default 0.
  double dampening = 0.0;
  /// L2 weight decay wd ≥ 0, added to the gradient as wd·p. Default 0.
  double weight_decay = 0.0;
  /// Nesterov momentum (needs μ > 0 and τ = 0, as in PyTorch). Default off.
  bool nesterov = false;

  /// Factor of the learning rate per step (core/schedule.hpp): step t (from 0) uses
  /// learning_rate · learning_rate_schedule(t). Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the step uses them scaled by
  /// c / ‖∇‖. Default 0: off.
  double max_gradient_norm = 0.0;

  /// Throws HyperparameterError if a field is out of its range.
  void validate() const {
    constexpr const char* a = "kfopt::SgdOptions";
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(learning_rate > 0.0 && std::isfinite(learning_rate), a,
                                   "learning_rate", learning_rate, "(0, inf), finite");
    detail::require_hyperparameter(momentum >= 0.0 && momentum < 1.0, a, "momentum", momentum, "[0, 1)");
    detail::require_hyperparameter(dampening >= 0.0 && dampening <= 1.0, a, "dampening", dampening, "[0, 1]");
    detail::require_hyperparameter(weight_decay >= 0.0 && std::isfinite(weight_decay), a,
                                   "weight_decay", weight_decay, "[0, inf), finite");
    detail::require_hyperparameter(!nesterov || (momentum > 0.0 && dampening == 0.0), a,
                                   "nesterov", nesterov, "momentum > 0 and dampening = 0");
  }
};

/// SGD over a ParameterSet (see sgd.hpp for the update).
template <typename Scalar>
class Sgd {
 public:
  /// Everything Sgd carries between steps (inspect, reset or checkpoint it).
  struct State {
    BlockBuffers<Scalar> momentum;  ///< b, one buffer per block
    /// Steps taken and steps refused for NaN/Inf.
    StepCounters counters;
  };

  /// Optimizes the blocks of `params` (which must outlive this object) with `options`.
  Sgd(ParameterSet<Scalar>& params, SgdOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.momentum = detail::zero_buffers_like(params);
  }

  /// One step from the gradients currently in the registered storage, all or nothing
  /// (core/step_guard.hpp): a non-finite gradient or current parameter anywhere refuses the
  /// step (Status::NonFiniteInput), a result that would not be finite refuses it
  /// (Status::Overflow); both are counted and write nothing. Throws ShapeError if a
  /// registered object changed shape, InvalidInputError on a moved-from optimizer.
  Status step() {
    constexpr const char* op = "kfopt::Sgd::step";
    usable_.require(op);
    const Scalar lr = static_cast<Scalar>(options_.learning_rate_schedule.scaled(
        op, "learning_rate", options_.learning_rate, state_.counters.steps));
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar wd = static_cast<Scalar>(options_.weight_decay);
    const Scalar keep = Scalar(1) - static_cast<Scalar>(options_.dampening);
    const bool first = state_.counters.steps == 0;
    const bool has_momentum = options_.momentum != 0.0;
    if (has_momentum) detail::shape_buffers_like(next_momentum_, *params_);
    const bool nesterov = options_.nesterov;
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto& grad, const auto& p, auto& pn, auto& guard) {
      // g = ∇ + wd·p (the gradient itself when wd = 0: one stream fewer).
      const auto with_gradient = [&](const auto& g) {
        if (!has_momentum) return guard.checked(detail::store(pn, p - lr * g));
        const auto bn = detail::tile(next_momentum_[i], o, n);
        const auto with = [&](const auto& momentum) {
          return nesterov ? guard.checked(detail::store(bn, momentum),
                                          detail::store(pn, p - lr * (g + mu * momentum)))
                          : guard.checked(detail::store(bn, momentum), detail::store(pn, p - lr * momentum));
        };
        return first ? with(g) : with(mu * detail::tile(state_.momentum[i], o, n) + keep * g);
      };
      return wd == Scalar(0) ? with_gradient(grad) : with_gradient(grad + wd * p);
    }, detail::GuardedInputs::GradientsAndValues, clip);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    if (has_momentum) detail::swap_buffers(state_.momentum, next_momentum_);
    ++state_.counters.steps;
    return Status::Success;
  }

  /// The hyperparameters in use.
  const SgdOptions& options() const noexcept { return options_; }
  /// Changes the learning rate (schedules); validated like the constructor's.
  void set_learning_rate(double lr) {
    usable_.require("kfopt::Sgd::set_learning_rate");
    SgdOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }
  /// The momentum buffers and step counters.
  const State& state() const noexcept { return state_; }
  /// Restores a state, all or nothing: throws ShapeError (buffers not shaped like the
  /// blocks) or InvalidInputError (a non-finite momentum entry, a negative counter), naming
  /// the entry, before anything changes.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::Sgd::set_state";
    usable_.require(op);
    detail::require_state_buffers(op, "momentum", s.momentum, *params_, detail::BufferRange::Finite);
    detail::require_counters(op, s.counters);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::Sgd":
  /// "<block>/momentum" per parameter block, "steps", "skipped_nonfinite". Hyperparameters: SgdOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::Sgd", state_, options_);
  }
  /// Restores a state_dict() of an identically built Sgd; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    SgdOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::Sgd::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, SgdOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("momentum", o.momentum, kC);
    io.hyperparameter("dampening", o.dampening, kC);
    io.hyperparameter("weight_decay", o.weight_decay, kC);
    io.hyperparameter("nesterov", o.nesterov);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "momentum", s.momentum);
    io.counters(s.counters);
  }

 private:
  ParameterSet<Scalar>* params_;
  SgdOptions options_;
  State state_;
  BlockBuffers<Scalar> next_momentum_;  // scratch of the guarded step
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
