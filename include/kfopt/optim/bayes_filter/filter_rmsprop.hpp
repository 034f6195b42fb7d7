#pragma once
/// \file filter_rmsprop.hpp
/// \brief Filter RMSProp: an exact scalar Kalman filter per parameter whose limits are
/// natural gradient (η = 0) and RMSProp (steady state) — Aitchison 2018, §2.1.1, eq. 8–14.
///
/// Each parameter w is inferred separately, under the drift prior of eq. 8,
/// `w(t+1) = (1 − η²/(2σ²)) w(t) + η ξ`, with the likelihood precision `Λ_like = e²`
/// (a Fisher sample, see FisherEstimate). With `∇` the loss gradient in the caller's
/// storage, the log-likelihood gradient is `g = −∇`, and one step of the filter is
///
///     update  (eq. 12, 10):  σ²_post = σ²_prior / (1 + σ²_prior e²)
///                            μ_post  = μ_prior − σ²_post ∇
///     predict (eq. 9, 11):   μ_prior(t+1) = (1 − η²/(2σ²)) μ_post
///                            σ²_prior(t+1) = (1 − η²/(2σ²))² σ²_post + η²
///
/// The preconditioner is updated before it is applied (§2.2.5), and the prior's decay is a
/// decoupled weight decay (§2.2.1: not scaled by σ²_post). Limits, tested:
/// - η = 0: `σ²_post(t) = (1/σ²_prior(1) + Σ_{t'≤t} e²(t'))⁻¹` (eq. 14), natural gradient
///   with a 1/t learning rate (eq. 13).
/// - η > 0, stationary `⟨e²⟩`: `σ²_post → η/sqrt⟨e²⟩` (RMSProp's normalizer), with a
///   relative error of first order, `≈ η sqrt⟨e²⟩/2 + η/(2σ² sqrt⟨e²⟩)`; the averaging
///   time of the implied second-moment estimate is `1/(2η sqrt⟨e²⟩)` steps.
///
/// **Phases (Nesterov-style API, §2.2.4).** The gradient belongs at the prior mean. The
/// parameters start as `μ_prior(1)`; `update()` turns them into `μ_post(t)` using the
/// gradient currently in storage, `predict()` moves them to `μ_prior(t+1)`, where the
/// caller evaluates the next gradient. `step()` = `update()` then `predict()`, so a plain
/// training loop (gradient, step, gradient, step, ...) evaluates every gradient at the
/// prior mean. Calling them out of order throws InvalidInputError.
///
/// **Likelihood scale S.** Pass `S · ∇(mean loss)`, S about the number of training examples
/// (filter/elementwise_filter.hpp). Too small an S turns the filter into SGD with step
/// `σ² S`, slow and silent; State::posterior_contraction flags it.
///
/// Cost per step: O(1) flops per parameter for each of update and predict, no allocation.

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

/// Hyperparameters of FilterRmsProp (Aitchison 2018, eq. 8).
struct FilterRmsPropOptions {
  /// η ≥ 0: the standard deviation of the drift injected into each weight per step
  /// (Q = η², eq. 8). It sets the steady-state step: σ²_post → η/sqrt⟨e²⟩, so η plays the
  /// role of RMSProp's learning rate. η = 0 is natural gradient (eq. 13–14). Must satisfy
  /// η² ≤ 2σ² (decay A = η²/(2σ²) ≤ 1). Default 1e-3.
  double learning_rate = 1e-3;
  /// σ² > 0 (finite): the stationary variance of each weight under the prior. Sets the
  /// prior's decoupled weight decay A = η²/(2σ²) per step. Default 0.05, which gives
  /// A = 1e-5 at η = 1e-3 (AdamW's default lr·wd).
  double prior_variance = 0.05;
  /// σ²_prior(1) ≥ 0: the variance before the first update; 0 means σ² (the prior's
  /// stationary variance). The first step is at most sqrt(σ²_prior(1))/2 in size per
  /// parameter for e = ∇. Default 0 (i.e. σ²).
  double initial_variance = 0.0;
  /// Source of e (Λ_like = e²). Default FisherEstimate::Gradient (e = ∇, the normalizer of
  /// RMSProp); the paper recommends Centered or Supplied (model-sampled), §2.2.8.
  FisherEstimate fisher = FisherEstimate::Gradient;
  /// β ∈ [0, 1): decay of the gradient average ĝ of FisherEstimate::Centered. Default 0.9.
  double centering_decay = 0.9;

  /// The natural-gradient limit (η = 0, eq. 13–14) with prior variance σ².
  static FilterRmsPropOptions natural_gradient(double prior_variance = 0.05) {
    FilterRmsPropOptions o;
    o.learning_rate = 0.0;
    o.prior_variance = prior_variance;
    return o;
  }

  /// Factor of η per step (core/schedule.hpp): the step with index t (from 0) uses
  /// η · learning_rate_schedule(t) in its prediction, checked against the range above.
  /// Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the data update uses them scaled
  /// by c / ‖∇‖ (the Fisher sample e = ∇ too; a supplied e is not scaled). Default 0: off.
  double max_gradient_norm = 0.0;

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    constexpr const char* a = "kfopt::FilterRmsPropOptions";
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(prior_variance > 0.0 && std::isfinite(prior_variance), a,
                                   "prior_variance", prior_variance, "(0, inf)");
    require_learning_rate(a, learning_rate);
    detail::require_hyperparameter(initial_variance >= 0.0 && std::isfinite(initial_variance), a,
                                   "initial_variance", initial_variance, "[0, inf) (0: prior_variance)");
    detail::require_hyperparameter(centering_decay >= 0.0 && centering_decay < 1.0, a,
                                   "centering_decay", centering_decay, "[0, 1)");
  }
  /// The range of η (also checked for each step's scheduled η).
  void require_learning_rate(const char* a, double eta) const {
    detail::require_hyperparameter(eta >= 0.0 && std::isfinite(eta), a, "learning_rate", eta,
                                   "[0, inf)");
    detail::require_hyperparameter(eta * eta <= 2.0 * prior_variance, a, "learning_rate", eta,
                                   "[0, sqrt(2 prior_variance)] (decay eta^2/(2 sigma^2) <= 1)");
  }
};

/// Filter RMSProp over a ParameterSet (see filter_rmsprop.hpp for the algorithm).
template <typename Scalar>
class FilterRmsProp {
 public:
  /// Everything FilterRmsProp carries between steps (inspect, reset or checkpoint it).
  struct State {
    /// σ²_prior(t) per parameter in the Prior phase, σ²_post(t) in the Posterior phase.
    BlockBuffers<Scalar> variance;
    /// ĝ, the bias-corrected gradient average (FisherEstimate::Centered only).
    BlockBuffers<Scalar> gradient_average;
    /// w_t = β w_{t−1} + 1 of ĝ's bias correction (Centered only).
    double centering_weight = 0.0;
    /// What the parameters hold (see FilterPhase).
    FilterPhase phase = FilterPhase::Prior;
    /// `steps` counts updates; `skipped_nonfinite` updates refused for NaN/Inf.
    StepCounters counters;
    /// Variances that rounding would have made negative and that were clamped at 0.
    std::int64_t clamped_variances = 0;
    /// Diagnostic after the last update: 1 − Σσ²_post / (P σ²) over the P parameters, the
    /// fraction of the prior's variance σ² the data have removed; below
    /// kfopt::weak_likelihood_contraction the likelihood scale S is too small
    /// (filter/elementwise_filter.hpp). NaN before the first update; not stored in
    /// checkpoints.
    double posterior_contraction = std::numeric_limits<double>::quiet_NaN();
  };

  /// Registers the blocks; σ²_prior(1) = initial_variance (or σ²) everywhere. Throws
  /// HyperparameterError for invalid options.
  FilterRmsProp(ParameterSet<Scalar>& params, FilterRmsPropOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    drift_ = ScalarDrift<Scalar>::from(options_.learning_rate, options_.prior_variance);
    state_.variance = detail::zero_buffers_like(params);
    const double v0 = options_.initial_variance > 0.0 ? options_.initial_variance
                                                      : options_.prior_variance;
    for (auto& b : state_.variance) b.setConstant(static_cast<Scalar>(v0));
    if (options_.fisher == FisherEstimate::Centered) {
      state_.gradient_average = detail::zero_buffers_like(params);
    }
  }

  /// Data update (eq. 10, 12) from the gradients in storage, evaluated at μ_prior; for
  /// FisherEstimate::Gradient or Centered. The parameters become μ_post. All or nothing
  /// (core/step_guard.hpp): a non-finite gradient or parameter anywhere refuses the update
  /// (Status::NonFiniteInput), a result that would not be finite refuses it
  /// (Status::Overflow); both are counted and write nothing. Throws InvalidInputError in the Posterior phase or with FisherEstimate::Supplied.
  Status update() { return update_impl("kfopt::FilterRmsProp::update", nullptr); }

  /// Data update with a caller-supplied Fisher sample e (one buffer per block, shaped like
  /// it; FisherEstimate::Supplied). NaN/Inf in e or the gradient skips the update.
  Status update(const BlockBuffers<Scalar>& e) {
    return update_impl("kfopt::FilterRmsProp::update", &e);
  }

  /// Prediction (eq. 9, 11): the parameters move to μ_prior(t+1) = (1 − η²/(2σ²)) μ_post
  /// and the variances to (1 − η²/(2σ²))² σ²_post + η². Throws InvalidInputError in the
  /// Prior phase. All or nothing: if the caller's parameters were made non-finite since the
  /// update (NonFiniteInput) or a result would not be finite (Overflow), nothing is written
  /// and the phase stays Posterior.
  Status predict() {
    constexpr const char* op = "kfopt::FilterRmsProp::predict";
    usable_.require(op);
    detail::require_filter_phase(op, state_.phase, FilterPhase::Posterior);
    return predict_impl(op, step_drift(op, state_.counters.steps > 0 ? state_.counters.steps - 1 : 0));
  }

  /// `update()` then `predict()`: afterwards the parameters hold μ_prior(t+1), where the
  /// next gradient belongs. On a skipped update nothing is written; a scheduled η is checked
  /// before either.
  Status step() {
    const ScalarDrift<Scalar> drift = step_drift("kfopt::FilterRmsProp::step", state_.counters.steps);
    const Status s = update();
    return s == Status::Success ? predict_impl("kfopt::FilterRmsProp::predict", drift) : s;
  }

  /// `update(e)` then `predict()`.
  Status step(const BlockBuffers<Scalar>& e) {
    const ScalarDrift<Scalar> drift = step_drift("kfopt::FilterRmsProp::step", state_.counters.steps);
    const Status s = update(e);
    return s == Status::Success ? predict_impl("kfopt::FilterRmsProp::predict", drift) : s;
  }

 private:
  Status predict_impl(const char* op, const ScalarDrift<Scalar>& drift) {
    detail::require_storage(op, *params_);
    detail::shape_buffers_like(next_variance_, *params_);
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto&, const auto& p, auto& pn, auto& guard) {
      if (!guard.save()) return false;
      auto vn = detail::tile(next_variance_[i], o, n);
      pn = p;
      vn = detail::tile(state_.variance[i], o, n);
      for (Eigen::Index k = 0; k < n; ++k) scalar_filter_predict(drift, pn[k], vn[k]);
      return detail::all_finite_tiles(pn, vn);
    }, detail::GuardedInputs::Values);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    detail::swap_buffers(state_.variance, next_variance_);
    state_.phase = FilterPhase::Prior;
    return Status::Success;
  }

 public:
  /// The posterior (Posterior phase) or prior (Prior phase) variance of each parameter.
  const BlockBuffers<Scalar>& variance() const noexcept { return state_.variance; }
  /// Whether the parameters hold the prior or the posterior mean.
  FilterPhase phase() const noexcept { return state_.phase; }

  /// The hyperparameters in use.
  const FilterRmsPropOptions& options() const noexcept { return options_; }
  /// Changes η (and with it the drift and decay); validated like the options.
  void set_learning_rate(double eta) {
    usable_.require("kfopt::FilterRmsProp::set_learning_rate");
    FilterRmsPropOptions o = options_;
    o.learning_rate = eta;
    o.validate();
    options_ = o;
    drift_ = ScalarDrift<Scalar>::from(options_.learning_rate, options_.prior_variance);
  }
  /// The filter state.
  const State& state() const noexcept { return state_; }
  /// Restores a state (e.g. a checkpoint), all or nothing. Throws ShapeError if the
  /// buffers do not match the blocks, InvalidInputError (naming the entry) for a negative
  /// or non-finite variance, a non-finite gradient average, a centering weight outside
  /// [0, 1/(1 − β)], a negative counter or an invalid phase.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::FilterRmsProp::set_state";
    usable_.require(op);
    detail::require_nonnegative_buffers(op, "variance", s.variance, *params_);
    if (options_.fisher == FisherEstimate::Centered) {
      detail::require_state_buffers(op, "gradient_average", s.gradient_average, *params_,
                                    detail::BufferRange::Finite);
    }
    detail::require_centering_weight(op, s.centering_weight, options_.centering_decay);
    detail::require_phase_value(op, s.phase);
    detail::require_counters(op, s.counters);
    detail::require_counter(op, "clamped_variances", s.clamped_variances);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::FilterRmsProp":
  /// "<block>/variance" (and "<block>/gradient_average" with the centered Fisher)
  /// per parameter block, "centering_weight", "phase", "clamped_variances", "steps",
  /// "skipped_nonfinite". Hyperparameters: FilterRmsPropOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::FilterRmsProp", state_, options_);
  }
  /// Restores a state_dict() of an identically built FilterRmsProp; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    FilterRmsPropOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::FilterRmsProp::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, FilterRmsPropOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("prior_variance", o.prior_variance, kC);
    io.hyperparameter("initial_variance", o.initial_variance, kC);
    io.hyperparameter("fisher", o.fisher);
    io.hyperparameter("centering_decay", o.centering_decay, kC);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "variance", s.variance, EntryConstraint::Nonnegative);
    io.buffers(*params_, "gradient_average", s.gradient_average);
    io.real("centering_weight", s.centering_weight);
    io.enumeration("phase", s.phase, 2);
    io.integer("clamped_variances", s.clamped_variances);
    io.counters(s.counters);
  }

 private:
  Status update_impl(const char* op, const BlockBuffers<Scalar>* e) {
    usable_.require(op);
    detail::require_filter_phase(op, state_.phase, FilterPhase::Prior);
    detail::FisherSample<Scalar> sample;
    const Status begun =
        detail::begin_data_update(op, options_.fisher, options_.centering_decay, e, *params_,
                                  state_.counters, state_.centering_weight, sample);
    if (begun != Status::Success) return begun;
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    const bool centered = options_.fisher == FisherEstimate::Centered;
    detail::shape_buffers_like(next_variance_, *params_);
    if (centered) detail::shape_buffers_like(next_average_, *params_);
    std::int64_t clamped = 0;
    double posterior_sum = 0.0;  // Σσ²_post, for the contraction
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o, Eigen::Index n,
                                               const auto& grad, const auto& p, auto& pn, auto& guard) {
      if (!guard.save()) return false;
      const Scalar* gd = grad.data();
      const Scalar* vd = state_.variance[i].data() + o;
      Scalar* vn = next_variance_[i].data() + o;
      const Scalar* avg = centered ? state_.gradient_average[i].data() + o : nullptr;
      Scalar* avg_next = centered ? next_average_[i].data() + o : nullptr;
      const Scalar* sup = e != nullptr ? (*e)[i].data() + o : nullptr;
      for (Eigen::Index k = 0; k < n; ++k) {
        const Scalar ek = sample(k, gd[k], avg, avg_next, sup);
        Scalar v = scalar_filter_posterior_variance(vd[k], ek);
        if (!(v >= Scalar(0))) {  // cannot happen for finite input; guarded all the same
          v = Scalar(0);
          ++clamped;
        }
        vn[k] = v;
        pn[k] = p[k] - v * gd[k];  // μ_post = μ_prior + σ²_post g, g = −∇ (eq. 10)
      }
      posterior_sum += static_cast<double>(detail::tile(next_variance_[i], o, n).sum());
      return detail::all_finite_tiles(pn, detail::tile(next_variance_[i], o, n)) &&
             (!centered || detail::all_finite_tiles(detail::tile(next_average_[i], o, n)));
    }, detail::GuardedInputs::GradientsAndValues, clip);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    detail::swap_buffers(state_.variance, next_variance_);
    if (centered) detail::swap_buffers(state_.gradient_average, next_average_);
    state_.centering_weight = sample.next_weight;
    state_.clamped_variances += clamped;
    state_.posterior_contraction = kfopt::posterior_contraction(
        static_cast<double>(params_->total_size()) * options_.prior_variance, posterior_sum);
    ++state_.counters.steps;
    state_.phase = FilterPhase::Posterior;
    return Status::Success;
  }

  // The drift of the prediction of the step with index t (η scheduled; HyperparameterError
  // before anything changes for a bad value).
  ScalarDrift<Scalar> step_drift(const char* op, std::int64_t t) const {
    if (options_.learning_rate_schedule.is_constant()) return drift_;
    const double eta =
        options_.learning_rate_schedule.scaled(op, "learning_rate", options_.learning_rate, t);
    options_.require_learning_rate(op, eta);
    return ScalarDrift<Scalar>::from(eta, options_.prior_variance);
  }

  ParameterSet<Scalar>* params_;
  FilterRmsPropOptions options_;
  ScalarDrift<Scalar> drift_;
  State state_;
  BlockBuffers<Scalar> next_variance_, next_average_;  // guarded-step scratch
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
