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

#include <cmath>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/schedule.hpp"
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

  /// Factor of the learning rate per step (core/schedule.hpp): step t (from 0) uses
  /// learning_rate · learning_rate_schedule(t). Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the step uses them scaled by
  /// c / ‖∇‖. Default 0: off.
  double max_gradient_norm = 0.0;

  /// Throws HyperparameterError if a field is out of its range.
  void validate() const {
    constexpr const char* a = "kfopt::RmsPropOptions";
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(learning_rate > 0.0 && std::isfinite(learning_rate), a,
                                   "learning_rate", learning_rate, "(0, inf), finite");
    detail::require_hyperparameter(alpha >= 0.0 && alpha < 1.0, a, "alpha", alpha, "[0, 1)");
    detail::require_hyperparameter(epsilon > 0.0 && std::isfinite(epsilon), a, "epsilon",
                                   epsilon, "(0, inf), finite");
    detail::require_hyperparameter(weight_decay >= 0.0 && std::isfinite(weight_decay), a,
                                   "weight_decay", weight_decay, "[0, inf), finite");
    detail::require_hyperparameter(momentum >= 0.0 && momentum < 1.0, a, "momentum", momentum, "[0, 1)");
  }
};

/// RMSProp over a ParameterSet (see rmsprop.hpp for the update).
template <typename Scalar>
class RmsProp {
 public:
  /// Everything RmsProp carries between steps (inspect, reset or checkpoint it).
  struct State {
    BlockBuffers<Scalar> square_average;    ///< v
    BlockBuffers<Scalar> gradient_average;  ///< ḡ (centered only)
    BlockBuffers<Scalar> momentum;          ///< b (momentum > 0 only)
    /// Steps taken and steps refused for NaN/Inf.
    StepCounters counters;
  };

  /// Optimizes the blocks of `params` (which must outlive this object) with `options`.
  RmsProp(ParameterSet<Scalar>& params, RmsPropOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.square_average = detail::zero_buffers_like(params);
    if (options_.centered) state_.gradient_average = detail::zero_buffers_like(params);
    if (options_.momentum > 0.0) state_.momentum = detail::zero_buffers_like(params);
  }

  /// One step, all or nothing (core/step_guard.hpp): a non-finite gradient or current
  /// parameter refuses it (Status::NonFiniteInput), a result that would not be finite
  /// refuses it (Status::Overflow); both are counted and write nothing.
  Status step() {
    constexpr const char* op = "kfopt::RmsProp::step";
    usable_.require(op);
    const Scalar a = static_cast<Scalar>(options_.alpha);
    const Scalar lr = static_cast<Scalar>(options_.learning_rate_schedule.scaled(
        op, "learning_rate", options_.learning_rate, state_.counters.steps));
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    const Scalar wd = static_cast<Scalar>(options_.weight_decay);
    const Scalar eps = static_cast<Scalar>(options_.epsilon);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const bool has_momentum = options_.momentum > 0.0;
    detail::shape_buffers_like(next_square_, *params_);
    if (options_.centered) detail::shape_buffers_like(next_average_, *params_);
    if (has_momentum) detail::shape_buffers_like(next_momentum_, *params_);
    const bool centered = options_.centered;
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto& grad, const auto& p, auto& pn, auto& guard) {
      const auto v = detail::tile(state_.square_average[i], o, n);
      const auto vn = detail::tile(next_square_[i], o, n);
      // g = ∇ + wd·p (the gradient itself when wd = 0: one stream fewer).
      const auto with_gradient = [&](const auto& g) {
        const auto square_average = a * v + (Scalar(1) - a) * g.square();
        // u = g / r (r as defined above), then the momentum buffer b = μ b + u, p ← p − η b
        // (or p ← p − η u without momentum).
        const auto with = [&](const auto& u, const auto&... centering) {
          if (!has_momentum) {
            return guard.checked(detail::store(vn, square_average), centering...,
                                 detail::store(pn, p - lr * u));
          }
          const auto momentum = mu * detail::tile(state_.momentum[i], o, n) + u;
          return guard.checked(detail::store(vn, square_average), centering...,
                               detail::store(detail::tile(next_momentum_[i], o, n), momentum),
                               detail::store(pn, p - lr * momentum));
        };
        if (!centered) return with(g / (square_average.sqrt() + eps));
        const auto gradient_average =
            a * detail::tile(state_.gradient_average[i], o, n) + (Scalar(1) - a) * g;
        return with(g / ((square_average - gradient_average.square()).cwiseMax(Scalar(0)).sqrt() + eps),
                    detail::store(detail::tile(next_average_[i], o, n), gradient_average));
      };
      return wd == Scalar(0) ? with_gradient(grad) : with_gradient(grad + wd * p);
    }, detail::GuardedInputs::GradientsAndValues, clip);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    detail::swap_buffers(state_.square_average, next_square_);
    if (centered) detail::swap_buffers(state_.gradient_average, next_average_);
    if (has_momentum) detail::swap_buffers(state_.momentum, next_momentum_);
    ++state_.counters.steps;
    return Status::Success;
  }

  /// The hyperparameters in use.
  const RmsPropOptions& options() const noexcept { return options_; }
  /// Changes η (schedules); validated like the options (HyperparameterError, nothing changed).
  void set_learning_rate(double lr) {
    usable_.require("kfopt::RmsProp::set_learning_rate");
    RmsPropOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }
  /// The averages and step counters.
  const State& state() const noexcept { return state_; }
  /// Restores a state, all or nothing: throws ShapeError or InvalidInputError (a
  /// non-finite entry, a negative square average, a negative counter), naming the entry,
  /// before anything changes.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::RmsProp::set_state";
    usable_.require(op);
    using detail::BufferRange;
    detail::require_state_buffers(op, "square_average", s.square_average, *params_,
                                  BufferRange::NonNegative);
    if (options_.centered) {
      detail::require_state_buffers(op, "gradient_average", s.gradient_average, *params_,
                                    BufferRange::Finite);
    }
    if (options_.momentum > 0.0) {
      detail::require_state_buffers(op, "momentum", s.momentum, *params_, BufferRange::Finite);
    }
    detail::require_counters(op, s.counters);
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
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "square_average", s.square_average, EntryConstraint::Nonnegative);
    io.buffers(*params_, "gradient_average", s.gradient_average);
    io.buffers(*params_, "momentum", s.momentum);
    io.counters(s.counters);
  }

 private:
  ParameterSet<Scalar>* params_;
  RmsPropOptions options_;
  State state_;
  BlockBuffers<Scalar> next_square_, next_average_, next_momentum_;  // guarded-step scratch
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
