#pragma once
/// \file adam.hpp
/// \brief Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with the semantics
/// of `torch.optim.Adam` / `torch.optim.AdamW`.
///
/// Per parameter p with gradient ∇ at step t = 1, 2, ...:
///
///     p ← p (1 − η wd)                         (AdamW: decoupled weight decay)
///     g = ∇ + wd p                              (Adam: L2 weight decay in the gradient)
///     m ← β1 m + (1 − β1) g
///     v ← β2 v + (1 − β2) g²
///     v̂ = max(v̂, v)  (amsgrad)   or   v̂ = v
///     p ← p − (η / (1 − β1^t)) · m / (sqrt(v̂) / sqrt(1 − β2^t) + ε)
///
/// ε is added outside the square root, after bias correction (as PyTorch does).
/// Cost per step: a few passes over the parameters, no allocation.

#include <cmath>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/schedule.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Hyperparameters of Adam / AdamW.
struct AdamOptions {
  /// Learning rate η > 0. Default 1e-3.
  double learning_rate = 1e-3;
  /// Decay β1 ∈ [0, 1) of the first-moment average. Default 0.9.
  double beta1 = 0.9;
  /// Decay β2 ∈ [0, 1) of the second-moment average. Default 0.999.
  double beta2 = 0.999;
  /// ε > 0 added to the bias-corrected root of v. Default 1e-8.
  double epsilon = 1e-8;
  /// Weight decay wd ≥ 0, finite: L2 in the gradient (Adam) or decoupled (AdamW, where
  /// η·wd < 1 is required: the decay factor 1 − η·wd must stay positive). Default 0.
  double weight_decay = 0.0;
  /// Decoupled weight decay (AdamW) instead of L2 in the gradient. Default off.
  bool decoupled_weight_decay = false;
  /// Keep the running maximum of v (AMSGrad, Reddi et al. 2018). Default off.
  bool amsgrad = false;

  /// Factor of the learning rate per step (core/schedule.hpp): step t (from 0) uses
  /// learning_rate · learning_rate_schedule(t) (with decoupled decay, each step's η·wd < 1
  /// is checked too). Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the step uses them scaled by
  /// c / ‖∇‖. Default 0: off.
  double max_gradient_norm = 0.0;

  /// AdamW's defaults (PyTorch): decoupled weight decay 0.01.
  static AdamOptions adamw(double learning_rate = 1e-3, double weight_decay = 0.01) {
    AdamOptions o;
    o.learning_rate = learning_rate;
    o.weight_decay = weight_decay;
    o.decoupled_weight_decay = true;
    return o;
  }

  /// Throws HyperparameterError if a field is out of its range.
  void validate() const {
    constexpr const char* a = "kfopt::AdamOptions";
    detail::require_hyperparameter(learning_rate > 0.0 && std::isfinite(learning_rate), a,
                                   "learning_rate", learning_rate, "(0, inf), finite");
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(beta1 >= 0.0 && beta1 < 1.0, a, "beta1", beta1, "[0, 1)");
    detail::require_hyperparameter(beta2 >= 0.0 && beta2 < 1.0, a, "beta2", beta2, "[0, 1)");
    detail::require_hyperparameter(epsilon > 0.0 && std::isfinite(epsilon), a, "epsilon",
                                   epsilon, "(0, inf), finite");
    detail::require_hyperparameter(weight_decay >= 0.0 && std::isfinite(weight_decay), a,
                                   "weight_decay", weight_decay, "[0, inf), finite");
    require_decay_factor(a, learning_rate);
  }
  /// Decoupled decay multiplies the parameters by 1 − η·wd each step: a factor <= 0 flips or
  /// zeroes them, so η·wd < 1 is required (for the scheduled η of every step too).
  void require_decay_factor(const char* a, double eta) const {
    detail::require_hyperparameter(!decoupled_weight_decay || eta * weight_decay < 1.0, a,
                                   "weight_decay", weight_decay,
                                   "[0, 1/learning_rate) with decoupled weight decay "
                                   "(learning_rate * weight_decay < 1)");
  }
};

/// Adam / AdamW over a ParameterSet (see adam.hpp for the update).
template <typename Scalar>
class Adam {
 public:
  /// Everything Adam carries between steps (inspect, reset or checkpoint it).
  struct State {
    BlockBuffers<Scalar> first_moment;   ///< m
    BlockBuffers<Scalar> second_moment;  ///< v
    BlockBuffers<Scalar> max_second_moment;  ///< max of v over steps (amsgrad only)
    /// Steps taken and steps refused for NaN/Inf.
    StepCounters counters;
  };

  /// Optimizes the blocks of `params` (which must outlive this object) with `options`.
  Adam(ParameterSet<Scalar>& params, AdamOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.first_moment = detail::zero_buffers_like(params);
    state_.second_moment = detail::zero_buffers_like(params);
    if (options_.amsgrad) state_.max_second_moment = detail::zero_buffers_like(params);
  }

  /// One step from the gradients in the registered storage, all or nothing
  /// (core/step_guard.hpp): a non-finite gradient or current parameter anywhere refuses the
  /// step (Status::NonFiniteInput), a result that would not be finite (e.g. v = g² overflowing
  /// for g = 1e20 in float) refuses it (Status::Overflow); both are counted and write
  /// nothing. Throws ShapeError if a registered object changed shape, InvalidInputError on
  /// a moved-from optimizer.
  Status step() {
    constexpr const char* op = "kfopt::Adam::step";
    usable_.require(op);
    const double eta = options_.learning_rate_schedule.scaled(op, "learning_rate",
                                                              options_.learning_rate,
                                                              state_.counters.steps);
    if (!options_.learning_rate_schedule.is_constant()) options_.require_decay_factor(op, eta);
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    const double t = static_cast<double>(state_.counters.steps + 1);
    const Scalar b1 = static_cast<Scalar>(options_.beta1);
    const Scalar b2 = static_cast<Scalar>(options_.beta2);
    const Scalar lr = static_cast<Scalar>(eta);
    const Scalar wd = static_cast<Scalar>(options_.weight_decay);
    const Scalar eps = static_cast<Scalar>(options_.epsilon);
    const Scalar step_size = static_cast<Scalar>(eta / (1.0 - std::pow(options_.beta1, t)));
    const Scalar inv_sqrt_bc2 =
        static_cast<Scalar>(1.0 / std::sqrt(1.0 - std::pow(options_.beta2, t)));
    detail::shape_buffers_like(next_first_, *params_);
    detail::shape_buffers_like(next_second_, *params_);
    if (options_.amsgrad) detail::shape_buffers_like(next_max_, *params_);
    const bool decoupled = options_.decoupled_weight_decay;
    const bool amsgrad = options_.amsgrad;
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto& grad, const auto& p, auto& pn, auto& guard) {
      const auto m = detail::tile(state_.first_moment[i], o, n);
      const auto v = detail::tile(state_.second_moment[i], o, n);
      const auto mn = detail::tile(next_first_[i], o, n);
      const auto vn = detail::tile(next_second_[i], o, n);
      // g: the gradient (with L2 decay unless decoupled); decay: AdamW's factor on p.
      const auto with = [&](const auto& g, Scalar decay) {
        const auto first_moment = b1 * m + (Scalar(1) - b1) * g;
        const auto second_moment = b2 * v + (Scalar(1) - b2) * g.square();
        if (amsgrad) {
          const auto vmax = detail::tile(next_max_[i], o, n);
          const auto running_max = detail::tile(state_.max_second_moment[i], o, n).max(second_moment);
          return guard.checked(
              detail::store(mn, first_moment), detail::store(vn, second_moment),
              detail::store(vmax, running_max),
              detail::store(pn, p * decay - step_size * first_moment / (running_max.sqrt() * inv_sqrt_bc2 + eps)));
        }
        return guard.checked(
            detail::store(mn, first_moment), detail::store(vn, second_moment),
            detail::store(pn, p * decay - step_size * first_moment / (second_moment.sqrt() * inv_sqrt_bc2 + eps)));
      };
      if (decoupled) return with(grad, Scalar(1) - lr * wd);
      return wd == Scalar(0) ? with(grad, Scalar(1)) : with(grad + wd * p, Scalar(1));
    }, detail::GuardedInputs::GradientsAndValues, clip);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    detail::swap_buffers(state_.first_moment, next_first_);
    detail::swap_buffers(state_.second_moment, next_second_);
    if (amsgrad) detail::swap_buffers(state_.max_second_moment, next_max_);
    ++state_.counters.steps;
    return Status::Success;
  }

  /// The hyperparameters in use.
  const AdamOptions& options() const noexcept { return options_; }
  /// Changes η (schedules); validated like the options (HyperparameterError, nothing changed).
  void set_learning_rate(double lr) {
    usable_.require("kfopt::Adam::set_learning_rate");
    AdamOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }
  /// The moments and step counters.
  const State& state() const noexcept { return state_; }
  /// Restores a state, all or nothing: throws ShapeError (buffers not shaped like the
  /// blocks) or InvalidInputError (a non-finite moment, a negative second moment, a
  /// running maximum below the second moment, a negative counter), naming the entry,
  /// before anything changes.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::Adam::set_state";
    usable_.require(op);
    using detail::BufferRange;
    detail::require_state_buffers(op, "first_moment", s.first_moment, *params_, BufferRange::Finite);
    detail::require_state_buffers(op, "second_moment", s.second_moment, *params_,
                                  BufferRange::NonNegative);
    if (options_.amsgrad) {
      detail::require_state_buffers(op, "max_second_moment", s.max_second_moment, *params_,
                                    BufferRange::NonNegative);
      for (std::size_t i = 0; i < params_->size(); ++i) {
        if (!(s.max_second_moment[i].array() >= s.second_moment[i].array()).all()) {
          throw InvalidInputError(std::string(op) + ": max_second_moment of block '" +
                                  (*params_)[i].name() +
                                  "' is below second_moment (it is their running maximum)");
        }
      }
    }
    detail::require_counters(op, s.counters);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::Adam":
  /// "<block>/first_moment", "<block>/second_moment" (and "<block>/max_second_moment" with
  /// amsgrad) per parameter block, "steps", "skipped_nonfinite". Hyperparameters: AdamOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::Adam", state_, options_);
  }
  /// Restores a state_dict() of an identically built Adam; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    AdamOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::Adam::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, AdamOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("beta1", o.beta1, kC);
    io.hyperparameter("beta2", o.beta2, kC);
    io.hyperparameter("epsilon", o.epsilon, kC);
    io.hyperparameter("weight_decay", o.weight_decay, kC);
    io.hyperparameter("decoupled_weight_decay", o.decoupled_weight_decay);
    io.hyperparameter("amsgrad", o.amsgrad);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "first_moment", s.first_moment);
    io.buffers(*params_, "second_moment", s.second_moment, EntryConstraint::Nonnegative);
    io.buffers(*params_, "max_second_moment", s.max_second_moment, EntryConstraint::Nonnegative);
    io.counters(s.counters);
  }

 private:
  ParameterSet<Scalar>* params_;
  AdamOptions options_;
  State state_;
  BlockBuffers<Scalar> next_first_, next_second_, next_max_;  // guarded-step scratch
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
