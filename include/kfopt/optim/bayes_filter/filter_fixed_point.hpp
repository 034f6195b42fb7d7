#pragma once
/// \file filter_fixed_point.hpp
/// \brief The fixed-point form of the Bayesian-filtering optimizers: the scalar filter's
/// steady-state variance evaluated at a running estimate of ⟨e²⟩ — Aitchison 2018, §2.1.1
/// with the weight-decay term of SI §4.1 kept.
///
/// The scalar filter (FilterRmsProp) relaxes towards the fixed point of
/// `σ²_post = σ²_post (1 − η²/σ²) − σ⁴_post ⟨e²⟩ + η²`, namely
///
///     1/σ²_post = (1/(2σ²)) (1 + sqrt(1 + 4σ⁴⟨e²⟩/η²)),
///
/// but only on a time scale 1/(2η sqrt⟨e²⟩) tied to η. The fixed-point form decouples the
/// two: it keeps Adam's exponential averages and uses the fixed point as the preconditioner.
/// Per parameter, with ∇ the loss gradient in storage, at step t = 1, 2, ...:
///
///     m ← β1 m + (1 − β1) ∇,          m̂ = m / (1 − β1^t)
///     v ← β2 v + (1 − β2) e²,         v̂ = v / (1 − β2^t)
///     σ²_post = 2σ² / (1 + sqrt(1 + 4σ⁴ v̂/η²))
///     p ← (1 − η²/(2σ²)) p − σ²_post m̂
///
/// Limits (tested): `σ² sqrt(v̂) ≪ η` gives σ²_post → σ², i.e. SGD with step σ² and weight
/// decay η²/(2σ²) per step; `σ² → ∞` gives σ²_post → η/sqrt(v̂), i.e. Adam with learning rate
/// η and a decoupled weight decay η²/(2σ²) — AdamW with `lr = η`, `wd = η/(2σ²)` (and no ε:
/// the fixed point is bounded by σ² as v̂ → 0). With β1 = 0 it is the fixed point of Filter
/// RMSProp itself. The decay is applied to the parameters before the gradient step, as AdamW.
///
/// **Likelihood scale S.** Pass `S · ∇(mean loss)`, S about the number of training examples
/// (filter/elementwise_filter.hpp); State::posterior_contraction flags an S too small for
/// the AdamW limit.
///
/// Cost per step: about 15 flops and one square root per parameter, no allocation.

#include <cmath>
#include <cstdint>
#include <limits>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/schedule.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/elementwise_filter.hpp"

namespace kfopt {

/// Hyperparameters of FilterFixedPoint.
struct FilterFixedPointOptions {
  /// η > 0: the filter's drift per step; Adam's learning rate in the limit σ² → ∞.
  /// Must satisfy η² ≤ 2σ². Default 1e-3.
  double learning_rate = 1e-3;
  /// σ² > 0 (finite): stationary prior variance of a weight. The step for vanishing
  /// gradients (SGD limit), and the decay η²/(2σ²) per step. Default 0.05 (decay 1e-5 at
  /// η = 1e-3, AdamW's default lr·wd; SGD step 0.05 where sqrt(v̂) ≪ η/(2σ²) = 0.01).
  double prior_variance = 0.05;
  /// β1 ∈ [0, 1): decay of the gradient average m (0: no momentum, the Filter RMSProp fixed
  /// point). Default 0.9.
  double beta1 = 0.9;
  /// β2 ∈ [0, 1): decay of the average v of e². Default 0.999.
  double beta2 = 0.999;
  /// Source of e. Default FisherEstimate::Gradient (Adam's v).
  FisherEstimate fisher = FisherEstimate::Gradient;
  /// β ∈ [0, 1): decay of the gradient average of FisherEstimate::Centered. Default 0.9.
  double centering_decay = 0.9;

  /// Factor of η per step (core/schedule.hpp): step t (from 0) uses
  /// η · learning_rate_schedule(t), checked against the range above. Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the step uses them scaled by
  /// c / ‖∇‖ (the Fisher sample e = ∇ too; a supplied e is not scaled). Default 0: off.
  double max_gradient_norm = 0.0;

  /// AdamW-like defaults: η = learning_rate and σ² chosen so that the decay η²/(2σ²) equals
  /// learning_rate · weight_decay (AdamW's convention), i.e. σ² = η/(2 wd).
  static FilterFixedPointOptions adamw(double learning_rate = 1e-3, double weight_decay = 0.01) {
    FilterFixedPointOptions o;
    o.learning_rate = learning_rate;
    o.prior_variance = learning_rate / (2.0 * weight_decay);
    return o;
  }

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    constexpr const char* a = "kfopt::FilterFixedPointOptions";
    detail::require_hyperparameter(prior_variance > 0.0 && std::isfinite(prior_variance), a,
                                   "prior_variance", prior_variance, "(0, inf)");
    require_learning_rate(a, learning_rate);
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(beta1 >= 0.0 && beta1 < 1.0, a, "beta1", beta1, "[0, 1)");
    detail::require_hyperparameter(beta2 >= 0.0 && beta2 < 1.0, a, "beta2", beta2, "[0, 1)");
    detail::require_hyperparameter(centering_decay >= 0.0 && centering_decay < 1.0, a,
                                   "centering_decay", centering_decay, "[0, 1)");
  }
  /// The range of η (also checked for each step's scheduled η).
  void require_learning_rate(const char* a, double eta) const {
    detail::require_hyperparameter(eta > 0.0 && std::isfinite(eta), a, "learning_rate", eta,
                                   "(0, inf)");
    detail::require_hyperparameter(eta * eta <= 2.0 * prior_variance, a, "learning_rate", eta,
                                   "(0, sqrt(2 prior_variance)] (decay eta^2/(2 sigma^2) <= 1)");
  }
};

/// The fixed-point form over a ParameterSet (see filter_fixed_point.hpp).
template <typename Scalar>
class FilterFixedPoint {
 public:
  /// Everything FilterFixedPoint carries between steps (inspect, reset or checkpoint it).
  struct State {
    BlockBuffers<Scalar> first_moment;      ///< m
    BlockBuffers<Scalar> second_moment;     ///< v (of e²)
    BlockBuffers<Scalar> gradient_average;  ///< ĝ (FisherEstimate::Centered only)
    double centering_weight = 0.0;          ///< w_t of ĝ's bias correction
    /// Steps taken and steps refused for NaN/Inf.
    StepCounters counters;
    /// Diagnostic after the last step: 1 − Σσ²_post / (P σ²) over the P parameters, the
    /// fraction of the prior variance σ² that the fixed point at the step's v̂ removes; below
    /// kfopt::weak_likelihood_contraction the likelihood scale S is too small
    /// (filter/elementwise_filter.hpp). NaN before the first step; not stored in checkpoints.
    double posterior_contraction = std::numeric_limits<double>::quiet_NaN();
  };

  /// Filters the blocks of `params` (which must outlive this object) with `options`.
  FilterFixedPoint(ParameterSet<Scalar>& params, FilterFixedPointOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    state_.first_moment = detail::zero_buffers_like(params);
    state_.second_moment = detail::zero_buffers_like(params);
    if (options_.fisher == FisherEstimate::Centered) {
      state_.gradient_average = detail::zero_buffers_like(params);
    }
  }

  /// One step (FisherEstimate::Gradient or Centered), all or nothing (core/step_guard.hpp):
  /// NaN/Inf in a gradient or parameter → NonFiniteInput, a result that would not be finite
  /// → Overflow; both counted, nothing written. Throws InvalidInputError with FisherEstimate::Supplied.
  Status step() { return step_impl(nullptr); }
  /// One step with a caller-supplied e (FisherEstimate::Supplied).
  Status step(const BlockBuffers<Scalar>& e) { return step_impl(&e); }

  /// The hyperparameters in use.
  const FilterFixedPointOptions& options() const noexcept { return options_; }
  /// Changes η; validated like the options (HyperparameterError, nothing changed).
  void set_learning_rate(double eta) {
    usable_.require("kfopt::FilterFixedPoint::set_learning_rate");
    FilterFixedPointOptions o = options_;
    o.learning_rate = eta;
    o.validate();
    options_ = o;
  }
  /// The filter state.
  const State& state() const noexcept { return state_; }
  /// Restores a state, all or nothing: throws ShapeError or InvalidInputError (naming the
  /// entry) for a non-finite moment, a negative second moment, a centering weight outside
  /// [0, 1/(1 − β)] or a negative counter.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::FilterFixedPoint::set_state";
    usable_.require(op);
    using detail::BufferRange;
    detail::require_state_buffers(op, "first_moment", s.first_moment, *params_, BufferRange::Finite);
    detail::require_nonnegative_buffers(op, "second_moment", s.second_moment, *params_);
    if (options_.fisher == FisherEstimate::Centered) {
      detail::require_state_buffers(op, "gradient_average", s.gradient_average, *params_,
                                    BufferRange::Finite);
    }
    detail::require_centering_weight(op, s.centering_weight, options_.centering_decay);
    detail::require_counters(op, s.counters);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::FilterFixedPoint":
  /// "<block>/first_moment", "<block>/second_moment" (and "<block>/gradient_average"
  /// with the centered Fisher) per parameter block, "centering_weight", "steps",
  /// "skipped_nonfinite". Hyperparameters: FilterFixedPointOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::FilterFixedPoint", state_, options_);
  }
  /// Restores a state_dict() of an identically built FilterFixedPoint; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    FilterFixedPointOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::FilterFixedPoint::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, FilterFixedPointOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("prior_variance", o.prior_variance, kC);
    io.hyperparameter("beta1", o.beta1, kC);
    io.hyperparameter("beta2", o.beta2, kC);
    io.hyperparameter("fisher", o.fisher);
    io.hyperparameter("centering_decay", o.centering_decay, kC);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "first_moment", s.first_moment);
    io.buffers(*params_, "second_moment", s.second_moment, EntryConstraint::Nonnegative);
    io.buffers(*params_, "gradient_average", s.gradient_average);
    io.real("centering_weight", s.centering_weight);
    io.counters(s.counters);
  }

 private:
  Status step_impl(const BlockBuffers<Scalar>* e) {
    constexpr const char* op = "kfopt::FilterFixedPoint::step";
    usable_.require(op);
    // The step's η first: a schedule's bad value throws before anything changes.
    const double eta_t = options_.learning_rate_schedule.scaled(
        op, "learning_rate", options_.learning_rate, state_.counters.steps);
    if (!options_.learning_rate_schedule.is_constant()) options_.require_learning_rate(op, eta_t);
    detail::FisherSample<Scalar> sample;
    const Status begun =
        detail::begin_data_update(op, options_.fisher, options_.centering_decay, e, *params_,
                                  state_.counters, state_.centering_weight, sample);
    if (begun != Status::Success) return begun;
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    const double t = static_cast<double>(state_.counters.steps + 1);
    const Scalar b1 = static_cast<Scalar>(options_.beta1);
    const Scalar b2 = static_cast<Scalar>(options_.beta2);
    const Scalar bc1 = static_cast<Scalar>(1.0 / (1.0 - std::pow(options_.beta1, t)));
    const Scalar bc2 = static_cast<Scalar>(1.0 / (1.0 - std::pow(options_.beta2, t)));
    const Scalar sigma2 = static_cast<Scalar>(options_.prior_variance);
    const Scalar eta = static_cast<Scalar>(eta_t);
    const Scalar keep = static_cast<Scalar>(1.0 - eta_t * eta_t / (2.0 * options_.prior_variance));
    const bool centered = options_.fisher == FisherEstimate::Centered;
    detail::shape_buffers_like(next_first_, *params_);
    detail::shape_buffers_like(next_second_, *params_);
    if (centered) detail::shape_buffers_like(next_average_, *params_);
    double posterior_sum = 0.0;  // Σσ²_post, for the contraction
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto& grad, const auto& w, auto& wn, auto& guard) {
      if (!guard.save()) return false;
      const Scalar* gd = grad.data();
      const Scalar* m = state_.first_moment[i].data() + o;
      const Scalar* v = state_.second_moment[i].data() + o;
      Scalar* mn = next_first_[i].data() + o;
      Scalar* vn = next_second_[i].data() + o;
      const Scalar* avg = centered ? state_.gradient_average[i].data() + o : nullptr;
      Scalar* avg_next = centered ? next_average_[i].data() + o : nullptr;
      const Scalar* sup = e != nullptr ? (*e)[i].data() + o : nullptr;
      Scalar tile_posterior = Scalar(0);
      for (Eigen::Index k = 0; k < n; ++k) {
        const Scalar ek = sample(k, gd[k], avg, avg_next, sup);
        mn[k] = b1 * m[k] + (Scalar(1) - b1) * gd[k];
        vn[k] = b2 * v[k] + (Scalar(1) - b2) * ek * ek;
        const Scalar s2 = fixed_point_posterior_variance(sigma2, eta, vn[k] * bc2);
        tile_posterior += s2;
        wn[k] = keep * w[k] - s2 * (mn[k] * bc1);
      }
      posterior_sum += static_cast<double>(tile_posterior);
      return detail::all_finite_tiles(wn, detail::tile(next_first_[i], o, n), detail::tile(next_second_[i], o, n)) &&
             (!centered || detail::all_finite_tiles(detail::tile(next_average_[i], o, n)));
    }, detail::GuardedInputs::GradientsAndValues, clip);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    detail::swap_buffers(state_.first_moment, next_first_);
    detail::swap_buffers(state_.second_moment, next_second_);
    if (centered) detail::swap_buffers(state_.gradient_average, next_average_);
    state_.centering_weight = sample.next_weight;
    state_.posterior_contraction = kfopt::posterior_contraction(
        static_cast<double>(params_->total_size()) * options_.prior_variance, posterior_sum);
    ++state_.counters.steps;
    return Status::Success;
  }

  ParameterSet<Scalar>* params_;
  FilterFixedPointOptions options_;
  State state_;
  BlockBuffers<Scalar> next_first_, next_second_, next_average_;  // guarded-step scratch
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
