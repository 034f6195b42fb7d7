#pragma once
/// \file rmsprop.hpp
/// \brief RMSProp (Tieleman & Hinton 2012; centered form of Graves 2013), with the
/// semantics of `torch.optim.RMSprop`.
///
/// Per parameter p with gradient ∇:
///
///     g  = ∇ + wd p
///     v ← α v + (1 − α) g²
///     ḡ ← α ḡ + (1 − α) g                       (centered only)
///     r  = sqrt(v − ḡ²) + ε   (centered)   or   r = sqrt(v) + ε
///     b ← μ b + g / r ;  p ← p − η b            (μ > 0)
///     p ← p − η g / r                           (μ = 0)
///
/// The centered variance v − ḡ² is clamped at 0 before the root: in exact arithmetic it is
/// ≥ 0, and rounding must not turn it into a NaN (PyTorch would produce one there).
/// Cost per step: a few passes over the parameters, no allocation.

#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Hyperparameters of RmsProp.
struct RmsPropOptions {
  /// Learning rate η > 0. Default 0.01 (PyTorch's default).
  double learning_rate = 0.01;
  /// Smoothing α ∈ [0, 1) of the squared-gradient average. Default 0.99.
  double alpha = 0.99;
  /// ε > 0 added to the root. Default 1e-8.
  double epsilon = 1e-8;
  /// L2 weight decay wd ≥ 0. Default 0.
  double weight_decay = 0.0;
  /// Momentum μ ∈ [0, 1). Default 0.
  double momentum = 0.0;
  /// Normalize by the estimated variance instead of the second moment. Default off.
  bool centered = false;

  void validate() const {
    constexpr const char* a = "kfopt::RmsPropOptions";
    detail::require_hyperparameter(learning_rate > 0.0, a, "learning_rate", learning_rate, "(0, inf)");
    detail::require_hyperparameter(alpha >= 0.0 && alpha < 1.0, a, "alpha", alpha, "[0, 1)");
    detail::require_hyperparameter(epsilon > 0.0, a, "epsilon", epsilon, "(0, inf)");
    detail::require_hyperparameter(weight_decay >= 0.0, a, "weight_decay", weight_decay, "[0, inf)");
    detail::require_hyperparameter(momentum >= 0.0 && momentum < 1.0, a, "momentum", momentum, "[0, 1)");
  }
};

/// RMSProp over a ParameterSet (see rmsprop.hpp for the update).
template <typename Scalar>
class RmsProp {
 public:
  struct State {
    BlockBuffers<Scalar> square_average;    ///< v
    BlockBuffers<Scalar> gradient_average;  ///< ḡ (centered only)
    BlockBuffers<Scalar> momentum;          ///< b (momentum > 0 only)
    StepCounters counters;
  };

  RmsProp(ParameterSet<Scalar>& params, RmsPropOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.square_average = detail::zero_buffers_like(params);
    if (options_.centered) state_.gradient_average = detail::zero_buffers_like(params);
    if (options_.momentum > 0.0) state_.momentum = detail::zero_buffers_like(params);
    scratch_ = detail::zero_buffers_like(params);
  }

  /// One step; a non-finite gradient anywhere skips the whole step and writes nothing.
  Status step() {
    const Status guard = detail::guard_gradients(*params_, state_.counters);
    if (guard != Status::Success) return guard;
    const Scalar a = static_cast<Scalar>(options_.alpha);
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar wd = static_cast<Scalar>(options_.weight_decay);
    const Scalar eps = static_cast<Scalar>(options_.epsilon);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    for (std::size_t i = 0; i < params_->size(); ++i) {
      auto p = (*params_)[i].value();
      auto& g = scratch_[i];
      g = (*params_)[i].gradient() + wd * p;
      auto& v = state_.square_average[i];
      v = a * v + (Scalar(1) - a) * g.cwiseAbs2();
      // g ← g / r, in place (r as defined above).
      if (options_.centered) {
        auto& gbar = state_.gradient_average[i];
        gbar = a * gbar + (Scalar(1) - a) * g;
        g.array() /= (v.array() - gbar.array().square()).cwiseMax(Scalar(0)).sqrt() + eps;
      } else {
        g.array() /= v.array().sqrt() + eps;
      }
      if (options_.momentum > 0.0) {
        auto& b = state_.momentum[i];
        b = mu * b + g;
        p -= lr * b;
      } else {
        p -= lr * g;
      }
    }
    ++state_.counters.steps;
    return Status::Success;
  }

  const RmsPropOptions& options() const noexcept { return options_; }
  void set_learning_rate(double lr) {
    RmsPropOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }
  const State& state() const noexcept { return state_; }
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::RmsProp::set_state";
    detail::require_buffers_like(op, "square_average", s.square_average, *params_);
    if (options_.centered) {
      detail::require_buffers_like(op, "gradient_average", s.gradient_average, *params_);
    }
    if (options_.momentum > 0.0) detail::require_buffers_like(op, "momentum", s.momentum, *params_);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::RmsProp":
  /// "<block>/square_average" (and "<block>/gradient_average" when centered,
  /// "<block>/momentum" with momentum > 0) per parameter block, "steps", "skipped_nonfinite". Hyperparameters: RmsPropOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::RmsProp", state_, options_);
  }
  /// Restores a state_dict() of an identically built RmsProp; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    RmsPropOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::RmsProp::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, RmsPropOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("alpha", o.alpha, kC);
    io.hyperparameter("epsilon", o.epsilon, kC);
    io.hyperparameter("weight_decay", o.weight_decay, kC);
    io.hyperparameter("momentum", o.momentum, kC);
    io.hyperparameter("centered", o.centered);
    io.buffers(*params_, "square_average", s.square_average, EntryConstraint::Nonnegative);
    io.buffers(*params_, "gradient_average", s.gradient_average);
    io.buffers(*params_, "momentum", s.momentum);
    io.counters(s.counters);
  }

 private:
  ParameterSet<Scalar>* params_;
  RmsPropOptions options_;
  State state_;
  BlockBuffers<Scalar> scratch_;  // g, then g / r
};

}  // namespace kfopt
