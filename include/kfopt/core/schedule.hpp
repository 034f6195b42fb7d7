#pragma once
/// \file schedule.hpp
/// \brief A schedule of a hyperparameter over the steps: a factor `f(t) > 0` of the step
/// index `t = 0, 1, 2, …` that multiplies a base value. Every gradient-based optimizer takes
/// one for its learning rate (`Options::learning_rate_schedule`: the step `t` uses
/// `learning_rate · f(t)`), K-FAC one more for its damping (`KfacOptions::damping_schedule`).
///
/// A schedule is a pure function of the step counter, which every optimizer's state holds and
/// its checkpoint restores: a run resumed from a checkpoint with the same schedule continues
/// exactly as the uninterrupted run. The schedule itself is code, like the model, and is not
/// stored in a checkpoint. `set_learning_rate()` changes the base value, so a schedule and
/// manual changes compose.
///
/// The common ones (`t` the step index, `f(0)` applies to the first step):
///
/// | factory | f(t) |
/// |---|---|
/// | `Schedule()` | 1 |
/// | `Schedule::step_decay(s, γ)` | γ^⌊t / s⌋ (PyTorch's StepLR) |
/// | `Schedule::cosine(T, φ)` | φ + (1 − φ) · (1 + cos(π · min(t, T) / T)) / 2 (Loshchilov & Hutter 2017, SGDR, eq. 5 without restarts) |
/// | `Schedule::warmup(w, after)` | (t + 1) / w for t < w, then `after(t − w)` (Goyal et al. 2017, §2.2, linear warm-up) |
/// | `Schedule(callable)` | any `double(std::int64_t)` |
///
/// `Schedule::warmup(500, Schedule::cosine(9500, 0.01))` is the usual warm-up then cosine
/// decay over 10⁴ steps. Every value is checked when a step uses it: one that is not finite
/// and > 0 makes the step throw HyperparameterError, naming the optimizer, the schedule, the
/// step and the value, before anything changes. Cost: one call per step.

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// A factor of the step index that multiplies a base hyperparameter (see schedule.hpp).
class Schedule {
 public:
  /// The factor as a function of the step index t ≥ 0.
  using Function = std::function<double(std::int64_t)>;

  /// The constant schedule, f(t) = 1.
  Schedule() : description_("constant") {}
  /// Any callable of the step index; `description` names it in error messages. Its values
  /// are checked when used (finite and > 0).
  explicit Schedule(Function factor, std::string description = "custom")
      : factor_(std::move(factor)), description_(std::move(description)) {
    if (!factor_) {
      throw HyperparameterError("kfopt::Schedule: the function is empty (use Schedule() for a constant)");
    }
  }

  /// f(t) = γ^⌊t / every⌋: the factor is multiplied by `gamma` ∈ (0, 1] every `every` ≥ 1
  /// steps.
  static Schedule step_decay(std::int64_t every, double gamma) {
    detail::require_hyperparameter(every >= 1, "kfopt::Schedule::step_decay", "every", every,
                                   "[1, inf)");
    detail::require_hyperparameter(gamma > 0.0 && gamma <= 1.0, "kfopt::Schedule::step_decay",
                                   "gamma", gamma, "(0, 1]");
    std::ostringstream name;
    name << "step_decay(" << every << ", " << gamma << ")";
    return Schedule([every, gamma](std::int64_t t) {
      return std::pow(gamma, static_cast<double>(t / every));
    }, name.str());
  }

  /// Cosine decay from 1 at t = 0 to `final_factor` ∈ (0, 1] at t = `steps` ≥ 1, constant
  /// after: f(t) = φ + (1 − φ) · (1 + cos(π · min(t, T) / T)) / 2. The final factor must be
  /// positive (a learning rate of 0 is not a step).
  static Schedule cosine(std::int64_t steps, double final_factor) {
    detail::require_hyperparameter(steps >= 1, "kfopt::Schedule::cosine", "steps", steps,
                                   "[1, inf)");
    detail::require_hyperparameter(final_factor > 0.0 && final_factor <= 1.0,
                                   "kfopt::Schedule::cosine", "final_factor", final_factor,
                                   "(0, 1]");
    std::ostringstream name;
    name << "cosine(" << steps << ", " << final_factor << ")";
    return Schedule([steps, final_factor](std::int64_t t) {
      const double pi = 3.14159265358979323846;
      const double x = static_cast<double>(t < steps ? t : steps) / static_cast<double>(steps);
      return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + std::cos(pi * x));
    }, name.str());
  }

  /// Linear warm-up over `steps` ≥ 1 steps, f(t) = (t + 1) / steps for t < steps, then
  /// `after(t − steps)` (the constant 1 by default).
  static Schedule warmup(std::int64_t steps, Schedule after = Schedule()) {
    detail::require_hyperparameter(steps >= 1, "kfopt::Schedule::warmup", "steps", steps,
                                   "[1, inf)");
    std::ostringstream name;
    name << "warmup(" << steps << ", " << after.description() << ")";
    return Schedule([steps, after = std::move(after)](std::int64_t t) {
      return t < steps ? static_cast<double>(t + 1) / static_cast<double>(steps)
                       : after(t - steps);
    }, name.str());
  }

  /// The factor at step t, unchecked (1 for the constant schedule).
  double operator()(std::int64_t t) const { return factor_ ? factor_(t) : 1.0; }

  /// Whether this is the constant schedule Schedule().
  bool is_constant() const noexcept { return !factor_; }

  /// How the schedule was made ("constant", "cosine(1000, 0.01)", "custom", ...).
  const std::string& description() const noexcept { return description_; }

  /// `base · f(t)`, checked: throws HyperparameterError naming `operation`, the
  /// hyperparameter `what`, the step and the values unless the factor and the product are
  /// finite and > 0 (the product may be 0 where the base is: a filter's η = 0).
  double scaled(const char* operation, const char* what, double base, std::int64_t t) const {
    if (!factor_) return base;
    const double f = factor_(t);
    const double value = base * f;
    if (!(f > 0.0) || !std::isfinite(f) || !std::isfinite(value) ||
        !(value > 0.0 || base == 0.0)) {
      std::ostringstream os;
      os << operation << ": " << what << "_schedule " << description_ << " at step " << t
         << " gives the factor " << f << " (" << what << " " << base << " · " << f << " = "
         << value << "); it must be finite and > 0";
      throw HyperparameterError(os.str());
    }
    return value;
  }

 private:
  Function factor_;
  std::string description_;
};

}  // namespace kfopt
