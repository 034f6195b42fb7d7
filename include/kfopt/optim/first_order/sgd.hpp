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

  void validate() const {
    constexpr const char* a = "kfopt::SgdOptions";
    detail::require_hyperparameter(learning_rate > 0.0, a, "learning_rate", learning_rate, "(0, inf)");
    detail::require_hyperparameter(momentum >= 0.0 && momentum < 1.0, a, "momentum", momentum, "[0, 1)");
    detail::require_hyperparameter(dampening >= 0.0 && dampening <= 1.0, a, "dampening", dampening, "[0, 1]");
    detail::require_hyperparameter(weight_decay >= 0.0, a, "weight_decay", weight_decay, "[0, inf)");
    detail::require_hyperparameter(!nesterov || (momentum > 0.0 && dampening == 0.0), a,
                                   "nesterov", nesterov, "momentum > 0 and dampening = 0");
  }
};

/// SGD over a ParameterSet (see sgd.hpp for the update).
template <typename Scalar>
class Sgd {
 public:
  struct State {
    BlockBuffers<Scalar> momentum;  ///< b, one buffer per block
    StepCounters counters;
  };

  Sgd(ParameterSet<Scalar>& params, SgdOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.momentum = detail::zero_buffers_like(params);
  }

  /// One step from the gradients currently in the registered storage. A non-finite gradient
  /// anywhere skips the whole step (Status::NonFiniteInput): nothing is written.
  Status step() {
    const Status guard = detail::guard_gradients(*params_, state_.counters);
    if (guard != Status::Success) return guard;
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar wd = static_cast<Scalar>(options_.weight_decay);
    const Scalar keep = Scalar(1) - static_cast<Scalar>(options_.dampening);
    const bool first = state_.counters.steps == 0;
    for (std::size_t i = 0; i < params_->size(); ++i) {
      auto p = (*params_)[i].value();
      const auto grad = (*params_)[i].gradient();
      auto& b = state_.momentum[i];
      if (options_.momentum == 0.0) {
        p -= lr * (grad + wd * p);
        continue;
      }
      if (first) {
        b = grad + wd * p;
      } else {
        b = mu * b + keep * (grad + wd * p);
      }
      if (options_.nesterov) {
        p -= lr * (grad + wd * p + mu * b);
      } else {
        p -= lr * b;
      }
    }
    ++state_.counters.steps;
    return Status::Success;
  }

  const SgdOptions& options() const noexcept { return options_; }
  /// Changes the learning rate (schedules); validated like the constructor's.
  void set_learning_rate(double lr) {
    SgdOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }
  const State& state() const noexcept { return state_; }
  void set_state(const State& s) {
    detail::require_buffers_like("kfopt::Sgd::set_state", "momentum", s.momentum, *params_);
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
    io.buffers(*params_, "momentum", s.momentum);
    io.counters(s.counters);
  }

 private:
  ParameterSet<Scalar>* params_;
  SgdOptions options_;
  State state_;
};

}  // namespace kfopt
