#pragma once
/// \file filter_adam.hpp
/// \brief Filter Adam: an exact 2×2 Kalman filter per parameter over the weight and an
/// auxiliary momentum, whose limit is Adam(W) with Nesterov-style gradient placement —
/// Aitchison 2018, §2.1.2 (eq. 15–22), §2.2.1, §2.2.4, §2.2.7 and SI §4.2.
///
/// Each parameter carries `z = (w, p)` with the drift prior of eq. 15–16:
///
///     w(t+1) = (1 − (η² + η_w²)/(2σ²)) w(t) + η p(t) + η_w ξ_w
///     p(t+1) = (1 − η_p) p(t) + η_p ξ_p
///
/// and the likelihood precision `Λ_like = e eᵀ` with `e = (e, 0)` (eq. 17: the objective
/// does not depend on p). With `∇` the loss gradient in storage (`g = −∇`), one step is
///
///     update  (eq. 7, 6):  s = 1 + Σ_ww e²;  Σ_ww ← Σ_ww/s,  Σ_wp ← Σ_wp/s,
///                          Σ_pp ← Σ_pp − e² Σ_wp²/s;
///                          μ_w ← μ_w − Σ_ww ∇   (FilterAdamForm::Combined only)
///                          μ_p ← μ_p − Σ_wp ∇
///     predict (eq. 3):     μ_w ← (1 − (η²+η_w²)/(2σ²)) μ_w + η μ_p,  μ_p ← (1 − η_p) μ_p
///                          Σ ← F Σ Fᵀ + Q
///
/// **Adam limit (§2.1.2).** For σ² → ∞ and η_w = 0, the steady state of the covariance
/// recursion (eq. 19–20) has `Σ_wp ≈ η_p/sqrt⟨e²⟩` (eq. 21) and `μ_p ≈ ⟨g⟩/sqrt⟨e²⟩`, so the
/// weight moves by `η ⟨g⟩/sqrt⟨e²⟩` per step — Adam with learning rate η and β1 = 1 − η_p —
/// provided the direct term `Σ_ww g` is dropped (eq. 22: `Σ_ww ≈ sqrt(2ηη_p)/⟨e²⟩^{3/4}`,
/// "≈ 0"). Eq. 21 assumes the data pin the momentum down (Σ_pp ≪ η_p/2). Solving eq. 20
/// without that assumption, with `x = η sqrt⟨e²⟩/η_p` and `Σ_wp = y η_p/sqrt⟨e²⟩`, gives
/// `1 = 2y(1 + sqrt(2xy))/x + y²`: the step is `y · η⟨g⟩/sqrt⟨e²⟩`, with y → 1 (relative
/// error ≈ sqrt(2/x)) only for **strong data, x ≫ 1**; for x ≪ 1, y ≈ x/2 and the weight
/// moves by only `η²⟨g⟩/(2η_p)` per step. The discrete filter follows the continuous
/// steady state while the per-step update is small, `Σ_ww e² ≈ η_p sqrt(2x) ≪ 1` (SI §4.1).
/// Unlike Adam the filter is therefore not invariant to the scale of the loss: the
/// momentum's prior has a fixed scale. FilterAdamForm::Adam drops the direct term (the
/// paper's Adam); FilterAdamForm::Combined keeps it (the exact Kalman-filter mean: RMSProp
/// and Adam combined, §2.2.7, typically with η_w > 0). The covariance recursion is the exact
/// filter's in both forms.
///
/// **Decoupled weight decay (§2.2.1)** comes from the prior: the decay
/// `(η² + η_w²)/(2σ²)` is applied in the prediction, unscaled by Σ, like AdamW.
///
/// **Nesterov placement (§2.2.4).** The gradient belongs at μ_prior, the point reached by
/// applying the momentum (and the decay) to μ_post. The parameters start as μ_prior(1);
/// `update()` makes them μ_post(t) from the gradient in storage; `predict()` moves them
/// to μ_prior(t+1) — the look-ahead point where the caller evaluates the next gradient.
/// `step()` = `update()` then `predict()`, so a plain loop (gradient, step, ...) gets the
/// Nesterov placement for free. Calls out of order throw InvalidInputError.
///
/// **Initial covariance.** `Σ_prior(1) = diag(σ²_w,init, η_p/(2 − η_p))`: the weight's
/// variance from the options (σ² by default), the momentum's stationary prior variance
/// (the exact solution of `Σ_pp = (1 − η_p)² Σ_pp + η_p²`, SI §4.2), no correlation; the
/// momentum mean starts at 0.
///
/// **Likelihood scale S.** Pass `S · ∇(mean loss)`, S about the number of training examples
/// (filter/elementwise_filter.hpp). With S too small the weights barely move while every step
/// succeeds; State::posterior_contraction flags it.
///
/// Cost per step: about 30 flops per parameter (three of them divisions), vectorized
/// (core/lanes.hpp), in one guarded pass over the parameters and the state — `step()` does
/// the update and the prediction in that one pass. No allocation after the first step.

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

/// Which mean update FilterAdam applies (the covariance is the exact filter's in both).
enum class FilterAdamForm {
  /// Drop the direct term `Σ_ww g` from the weight's mean update (eq. 18a with Σ_ww ≈ 0,
  /// eq. 22): the weight moves only through the momentum. Recovers Adam(W).
  Adam,
  /// Keep `Σ_ww ≠ 0`: the exact Kalman-filter mean, a combination of an RMSProp-like direct
  /// step and Adam's momentum step (§2.2.7). Use with weight_noise η_w > 0.
  Combined,
};

/// Hyperparameters of FilterAdam (Aitchison 2018, eq. 15–16).
struct FilterAdamOptions {
  /// η ≥ 0: the coupling of the momentum into the weight (`w += η p` per step), Adam's
  /// learning rate in the limit of §2.1.2. Must satisfy (η² + η_w²) ≤ 2σ². Default 1e-3.
  double learning_rate = 1e-3;
  /// η_p ∈ (0, 1]: the momentum's decay and noise scale (eq. 15); Adam's β1 = 1 − η_p.
  /// Default 0.1 (β1 = 0.9).
  double momentum_rate = 0.1;
  /// η_w ≥ 0: standard deviation of the noise injected directly into the weight (Q_ww = η_w²).
  /// 0 recovers Adam; > 0 with FilterAdamForm::Combined gives §2.2.7. Default 0.
  double weight_noise = 0.0;
  /// σ² > 0 (finite): stationary variance of a weight under the prior. Sets the decoupled
  /// weight decay (η² + η_w²)/(2σ²) per step. The Adam limit is σ² → ∞. Default 0.05
  /// (decay 1e-5 per step at η = 1e-3, AdamW's default lr·wd).
  double prior_variance = 0.05;
  /// Σ_ww of Σ_prior(1) ≥ 0; 0 means σ². Default 0.
  double initial_weight_variance = 0.0;
  /// Mean update form. Default FilterAdamForm::Adam.
  FilterAdamForm form = FilterAdamForm::Adam;
  /// Source of e. Default FisherEstimate::Gradient (Adam's normalizer); the paper
  /// recommends Centered or Supplied (§2.2.8).
  FisherEstimate fisher = FisherEstimate::Gradient;
  /// β ∈ [0, 1): decay of the gradient average of FisherEstimate::Centered. Default 0.9.
  double centering_decay = 0.9;

  /// Factor of η per step (core/schedule.hpp): the step with index t (from 0) uses
  /// η · learning_rate_schedule(t) in its prediction, checked against the range above.
  /// Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// gradients together exceeds c = max_gradient_norm ≥ 0, the data update uses them scaled
  /// by c / ‖∇‖ (the Fisher sample e = ∇ too; a supplied e is not scaled). Default 0: off.
  double max_gradient_norm = 0.0;

  /// The RMSProp–Adam combination of §2.2.7: Combined form with weight noise η_w.
  static FilterAdamOptions combined(double learning_rate = 1e-3, double weight_noise = 1e-3) {
    FilterAdamOptions o;
    o.learning_rate = learning_rate;
    o.weight_noise = weight_noise;
    o.form = FilterAdamForm::Combined;
    return o;
  }

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    constexpr const char* a = "kfopt::FilterAdamOptions";
    detail::require_hyperparameter(prior_variance > 0.0 && std::isfinite(prior_variance), a,
                                   "prior_variance", prior_variance, "(0, inf)");
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(momentum_rate > 0.0 && momentum_rate <= 1.0, a,
                                   "momentum_rate", momentum_rate, "(0, 1]");
    detail::require_hyperparameter(weight_noise >= 0.0 && std::isfinite(weight_noise), a,
                                   "weight_noise", weight_noise, "[0, inf)");
    require_learning_rate(a, learning_rate);
    detail::require_hyperparameter(initial_weight_variance >= 0.0 &&
                                       std::isfinite(initial_weight_variance),
                                   a, "initial_weight_variance", initial_weight_variance,
                                   "[0, inf) (0: prior_variance)");
    detail::require_hyperparameter(centering_decay >= 0.0 && centering_decay < 1.0, a,
                                   "centering_decay", centering_decay, "[0, 1)");
  }
  /// The range of η (also checked for each step's scheduled η).
  void require_learning_rate(const char* a, double eta) const {
    detail::require_hyperparameter(eta >= 0.0 && std::isfinite(eta), a, "learning_rate", eta,
                                   "[0, inf)");
    detail::require_hyperparameter(eta * eta + weight_noise * weight_noise <= 2.0 * prior_variance,
                                   a, "learning_rate", eta,
                                   "eta^2 + weight_noise^2 <= 2 prior_variance (decay <= 1)");
  }
};

/// Filter Adam over a ParameterSet (see filter_adam.hpp for the algorithm).
template <typename Scalar>
class FilterAdam {
 public:
  /// Everything FilterAdam carries between steps (inspect, reset or checkpoint it).
  struct State {
    BlockBuffers<Scalar> momentum;        ///< μ_p per parameter
    BlockBuffers<Scalar> weight_variance; ///< Σ_ww (prior or posterior, see phase)
    BlockBuffers<Scalar> cross_covariance;///< Σ_wp
    BlockBuffers<Scalar> momentum_variance; ///< Σ_pp
    BlockBuffers<Scalar> gradient_average;  ///< ĝ (FisherEstimate::Centered only)
    double centering_weight = 0.0;          ///< w_t of ĝ's bias correction
    /// Whether the parameters hold the prior or the posterior mean.
    FilterPhase phase = FilterPhase::Prior;
    StepCounters counters;                  ///< updates taken / refused for NaN/Inf
    /// 2×2 covariances that rounding pushed outside the PSD cone and that were clamped back
    /// (see clamp_covariance), counted per parameter and event.
    std::int64_t clamped_variances = 0;
    /// Diagnostic after the last update: 1 − ΣΣ_ww,post / (P σ²) over the P weights, the
    /// fraction of the prior's variance σ² the data have removed; below
    /// kfopt::weak_likelihood_contraction the likelihood scale S is too small and the weights
    /// barely move (filter/elementwise_filter.hpp). NaN before the first update; not stored
    /// in checkpoints.
    double posterior_contraction = std::numeric_limits<double>::quiet_NaN();
  };

  /// Registers the blocks and sets Σ_prior(1) (see filter_adam.hpp). Throws
  /// HyperparameterError for invalid options.
  FilterAdam(ParameterSet<Scalar>& params, FilterAdamOptions options = {})
      : params_(&params), options_(options) {
    options_.validate();
    drift_ = make_drift(options_);
    state_.momentum = detail::zero_buffers_like(params);
    state_.weight_variance = detail::zero_buffers_like(params);
    state_.cross_covariance = detail::zero_buffers_like(params);
    state_.momentum_variance = detail::zero_buffers_like(params);
    const double ww = options_.initial_weight_variance > 0.0 ? options_.initial_weight_variance
                                                             : options_.prior_variance;
    const double pp = options_.momentum_rate / (2.0 - options_.momentum_rate);
    for (auto& b : state_.weight_variance) b.setConstant(static_cast<Scalar>(ww));
    for (auto& b : state_.momentum_variance) b.setConstant(static_cast<Scalar>(pp));
    if (options_.fisher == FisherEstimate::Centered) {
      state_.gradient_average = detail::zero_buffers_like(params);
    }
  }

  /// Data update (eq. 7, 6) from the gradients in storage (evaluated at μ_prior);
  /// FisherEstimate::Gradient or Centered. Parameters become μ_post. All or nothing
  /// (core/step_guard.hpp): non-finite gradient or parameter → NonFiniteInput, a result that
  /// would not be finite → Overflow; both counted, nothing written. Throws InvalidInputError in the Posterior
  /// phase or with FisherEstimate::Supplied.
  Status update() { return update_impl("kfopt::FilterAdam::update", nullptr); }

  /// Data update with a caller-supplied Fisher sample e (FisherEstimate::Supplied).
  Status update(const BlockBuffers<Scalar>& e) {
    return update_impl("kfopt::FilterAdam::update", &e);
  }

  /// Prediction (eq. 3 with eq. 16): parameters move to μ_prior(t+1) = keep_w μ_w + η μ_p,
  /// momentum decays, Σ ← FΣFᵀ + Q. Throws InvalidInputError in the Prior phase. All or
  /// nothing: parameters made non-finite since the update (NonFiniteInput) or a result that
  /// would not be finite (Overflow) write nothing; the phase stays Posterior.
  Status predict() {
    constexpr const char* op = "kfopt::FilterAdam::predict";
    usable_.require(op);
    detail::require_filter_phase(op, state_.phase, FilterPhase::Posterior);
    const MomentumDrift<Scalar> drift =
        step_drift(op, state_.counters.steps > 0 ? state_.counters.steps - 1 : 0);
    std::int64_t clamped = 0;
    const Status guarded =
        pass<false, true>(op, detail::FisherSample<Scalar>{}, nullptr, drift, Scalar(1), clamped,
                          state_.posterior_contraction);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    state_.clamped_variances += clamped;
    state_.phase = FilterPhase::Prior;
    return Status::Success;
  }

  /// `update()` then `predict()` in one pass over the elements (parameters end at the
  /// look-ahead point μ_prior(t+1)), with the same results, bit for bit, as the two calls.
  /// All or nothing as a whole: when either part is refused (NonFiniteInput for a non-finite
  /// gradient or parameter, Overflow for a result of the update or of the prediction that
  /// would not be finite) nothing is written, the phase stays Prior and one refusal is
  /// counted. Throws InvalidInputError in the Posterior phase.
  Status step() { return step_impl("kfopt::FilterAdam::step", nullptr); }
  /// `update(e)` then `predict()`, as step().
  Status step(const BlockBuffers<Scalar>& e) { return step_impl("kfopt::FilterAdam::step", &e); }

  /// Whether the parameters hold the prior or the posterior mean.
  FilterPhase phase() const noexcept { return state_.phase; }
  /// The hyperparameters in use.
  const FilterAdamOptions& options() const noexcept { return options_; }
  /// Changes η (drift coupling and decay); validated like the options.
  void set_learning_rate(double eta) {
    usable_.require("kfopt::FilterAdam::set_learning_rate");
    FilterAdamOptions o = options_;
    o.learning_rate = eta;
    o.validate();
    options_ = o;
    drift_ = make_drift(options_);
  }
  /// The filter state (moments, covariances, phase and counters).
  const State& state() const noexcept { return state_; }
  /// Restores a state, all or nothing. Throws ShapeError for buffers that do not match the
  /// blocks, InvalidInputError (naming the entry) for non-finite entries, negative variances,
  /// a 2×2 covariance that is not positive semi-definite (Σ_wp² > Σ_ww Σ_pp beyond
  /// rounding), a centering weight outside [0, 1/(1 − β)], a negative counter or an invalid
  /// phase.
  void set_state(const State& s) {
    constexpr const char* op = "kfopt::FilterAdam::set_state";
    usable_.require(op);
    using detail::BufferRange;
    detail::require_state_buffers(op, "momentum", s.momentum, *params_, BufferRange::Finite);
    detail::require_nonnegative_buffers(op, "weight_variance", s.weight_variance, *params_);
    detail::require_state_buffers(op, "cross_covariance", s.cross_covariance, *params_,
                                  BufferRange::Finite);
    detail::require_nonnegative_buffers(op, "momentum_variance", s.momentum_variance, *params_);
    const Scalar tol = Scalar(16) * ScalarTraits<Scalar>::epsilon();
    for (std::size_t i = 0; i < params_->size(); ++i) {
      const auto ww = s.weight_variance[i].array();
      const auto wp = s.cross_covariance[i].array();
      const auto pp = s.momentum_variance[i].array();
      if (!(wp.square() <= ww * pp * (Scalar(1) + tol) + std::numeric_limits<Scalar>::min()).all()) {
        throw InvalidInputError(std::string(op) + ": the covariance of block '" +
                                (*params_)[i].name() +
                                "' is not positive semi-definite (cross_covariance^2 > "
                                "weight_variance * momentum_variance)");
      }
    }
    if (options_.fisher == FisherEstimate::Centered) {
      detail::require_state_buffers(op, "gradient_average", s.gradient_average, *params_,
                                    BufferRange::Finite);
    }
    detail::require_centering_weight(op, s.centering_weight, options_.centering_decay);
    detail::require_phase_value(op, s.phase);
    detail::require_counters(op, s.counters);
    detail::require_counter(op, "clamped_variances", s.clamped_variances);
    state_ = s;
  }


  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::FilterAdam":
  /// "<block>/momentum", "<block>/weight_variance", "<block>/cross_covariance",
  /// "<block>/momentum_variance" (and "<block>/gradient_average" with the centered Fisher) per
  /// parameter block, "centering_weight", "phase", "clamped_variances", "steps",
  /// "skipped_nonfinite". Hyperparameters: FilterAdamOptions's fields;
  /// the learning rate is restored on load, the others must match.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::FilterAdam", state_, options_);
  }
  /// Restores a state_dict() of an identically built FilterAdam; all-or-nothing (nothing changes
  /// when it throws). See core/state_dict.hpp for what is checked.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    State s = state_;
    FilterAdamOptions o = options_;
    detail::read_state_dict<Scalar>(*this, "kfopt::FilterAdam::load_state_dict", dict, load, s, o);
    o.validate();
    set_state(s);
    set_learning_rate(o.learning_rate);
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, FilterAdamOptions& o) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("momentum_rate", o.momentum_rate, kC);
    io.hyperparameter("weight_noise", o.weight_noise, kC);
    io.hyperparameter("prior_variance", o.prior_variance, kC);
    io.hyperparameter("initial_weight_variance", o.initial_weight_variance, kC);
    io.hyperparameter("form", o.form);
    io.hyperparameter("fisher", o.fisher);
    io.hyperparameter("centering_decay", o.centering_decay, kC);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.buffers(*params_, "momentum", s.momentum);
    io.buffers(*params_, "weight_variance", s.weight_variance, EntryConstraint::Nonnegative);
    io.buffers(*params_, "cross_covariance", s.cross_covariance);
    io.buffers(*params_, "momentum_variance", s.momentum_variance, EntryConstraint::Nonnegative);
    io.buffers(*params_, "gradient_average", s.gradient_average);
    io.real("centering_weight", s.centering_weight);
    io.enumeration("phase", s.phase, 2);
    io.integer("clamped_variances", s.clamped_variances);
    io.counters(s.counters);
  }

 private:
  static MomentumDrift<Scalar> make_drift(const FilterAdamOptions& o) {
    return MomentumDrift<Scalar>::from(o.learning_rate, o.momentum_rate, o.weight_noise,
                                       o.prior_variance);
  }
  // The drift of the prediction of the step with index t (η scheduled; HyperparameterError
  // before anything changes for a bad value).
  MomentumDrift<Scalar> step_drift(const char* op, std::int64_t t) const {
    if (options_.learning_rate_schedule.is_constant()) return drift_;
    const double eta =
        options_.learning_rate_schedule.scaled(op, "learning_rate", options_.learning_rate, t);
    options_.require_learning_rate(op, eta);
    return MomentumDrift<Scalar>::from(eta, options_.momentum_rate, options_.weight_noise,
                                       options_.prior_variance);
  }

  // The data update (kUpdate) and/or the prediction (kPredict) in one pass over the
  // elements, a SIMD packet of them at a time (core/lanes.hpp), guarded as every step
  // (core/step_guard.hpp): the new parameters are written in place tile by tile (restored if a
  // later tile fails), the new state into the scratch buffers, swapped in only when every
  // input and result of every tile is finite. Adds the clamp events to `clamped` (which the
  // caller commits with the step).
  template <bool kUpdate, bool kPredict>
  Status pass(const char* op, const detail::FisherSample<Scalar>& sample,
              const BlockBuffers<Scalar>* e, const MomentumDrift<Scalar>& drift, Scalar clip,
              std::int64_t& clamped, double& contraction) {
    double posterior_sum = 0.0;  // of Σ_ww, for the contraction
    const bool direct = kUpdate && options_.form == FilterAdamForm::Combined;
    const bool weight = kPredict || direct;  // the parameters change
    const bool centered = kUpdate && options_.fisher == FisherEstimate::Centered;
    for (auto* b : {&next_momentum_, &next_ww_, &next_wp_, &next_pp_}) {
      detail::shape_buffers_like(*b, *params_);
    }
    if (centered) detail::shape_buffers_like(next_average_, *params_);
    const Status guarded = guarded_.run(op, *params_, [&](std::size_t i, Eigen::Index o,
                                                          Eigen::Index n, const auto& grad,
                                                          const auto& p, auto& pn, auto& guard) {
      if (!guard.save()) return false;
      const Scalar* gd = grad.data();
      const Scalar* w = p.data();  // the same storage as pn: read at k before pn[k] is written
      const Scalar* m = state_.momentum[i].data() + o;
      const Scalar* ww = state_.weight_variance[i].data() + o;
      const Scalar* wp = state_.cross_covariance[i].data() + o;
      const Scalar* pp = state_.momentum_variance[i].data() + o;
      Scalar* mn = next_momentum_[i].data() + o;
      Scalar* wwn = next_ww_[i].data() + o;
      Scalar* wpn = next_wp_[i].data() + o;
      Scalar* ppn = next_pp_[i].data() + o;
      const Scalar* avg = centered ? state_.gradient_average[i].data() + o : nullptr;
      Scalar* avg_next = centered ? next_average_[i].data() + o : nullptr;
      const Scalar* sup = e != nullptr ? (*e)[i].data() + o : nullptr;
      detail::LaneCounter<Scalar> clamps;
      detail::LaneFiniteness<Scalar> finite;
      detail::LaneSum<Scalar> posterior;
      detail::for_each_lane<Scalar>(n, [&](Eigen::Index k, auto lane) {
        using T = decltype(lane);
        using detail::lane_load;
        using detail::lane_store;
        WeightMomentumCovariance<T> c{lane_load<T>(ww + k), lane_load<T>(wp + k),
                                      lane_load<T>(pp + k)};
        T mean_w = weight ? lane_load<T>(w + k) : T(0);
        T mean_p = lane_load<T>(m + k);
        if (kUpdate) {
          const T g = lane_load<T>(gd + k);
          clamps.add(momentum_filter_update(c, sample.lanes(k, g, avg, avg_next, sup)));
          posterior.add(c.ww);
          // μ_post = μ_prior + Σ_post (g, 0), g = −∇ (eq. 6).
          if (direct) {
            const T step_w = c.ww * g;
            mean_w = mean_w - step_w;
          }
          const T step_p = c.wp * g;
          mean_p = mean_p - step_p;
        }
        if (kPredict) clamps.add(momentum_filter_predict(drift, mean_w, mean_p, c));
        if (weight) lane_store(pn.data() + k, mean_w);
        lane_store(mn + k, mean_p);
        lane_store(wwn + k, c.ww);
        lane_store(wpn + k, c.wp);
        lane_store(ppn + k, c.pp);
        finite.add(mean_w);
        finite.add(mean_p);
        finite.add(c.ww);
        finite.add(c.wp);
        finite.add(c.pp);
      });
      clamped += clamps.total();
      if (kUpdate) posterior_sum += posterior.total();
      return finite.finite() &&
             (!centered || detail::all_finite_tiles(detail::tile(next_average_[i], o, n)));
    }, kUpdate ? detail::GuardedInputs::GradientsAndValues : detail::GuardedInputs::Values, clip);
    if (guarded != Status::Success) return guarded;
    detail::swap_buffers(state_.momentum, next_momentum_);
    detail::swap_buffers(state_.weight_variance, next_ww_);
    detail::swap_buffers(state_.cross_covariance, next_wp_);
    detail::swap_buffers(state_.momentum_variance, next_pp_);
    if (centered) detail::swap_buffers(state_.gradient_average, next_average_);
    if (kUpdate) {
      contraction = kfopt::posterior_contraction(
          static_cast<double>(params_->total_size()) * options_.prior_variance, posterior_sum);
    }
    return Status::Success;
  }

  // The start of update() and step(): phase, call and inputs (begin_data_update).
  Status begin_update(const char* op, const BlockBuffers<Scalar>* e,
                      detail::FisherSample<Scalar>& sample) {
    usable_.require(op);
    detail::require_filter_phase(op, state_.phase, FilterPhase::Prior);
    return detail::begin_data_update(op, options_.fisher, options_.centering_decay, e, *params_,
                                     state_.counters, state_.centering_weight, sample);
  }

  Status update_impl(const char* op, const BlockBuffers<Scalar>* e) {
    detail::FisherSample<Scalar> sample;
    const Status begun = begin_update(op, e, sample);
    if (begun != Status::Success) return begun;
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    std::int64_t clamped = 0;
    double contraction = 0.0;
    const Status guarded = pass<true, false>(op, sample, e, drift_, clip, clamped, contraction);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    state_.clamped_variances += clamped;
    state_.posterior_contraction = contraction;
    state_.centering_weight = sample.next_weight;
    ++state_.counters.steps;
    state_.phase = FilterPhase::Posterior;
    return Status::Success;
  }

  Status step_impl(const char* op, const BlockBuffers<Scalar>* e) {
    const MomentumDrift<Scalar> drift = step_drift(op, state_.counters.steps);
    detail::FisherSample<Scalar> sample;
    const Status begun = begin_update(op, e, sample);
    if (begun != Status::Success) return begun;
    const Scalar clip = detail::gradient_clip_factor(*params_, options_.max_gradient_norm);
    std::int64_t clamped = 0;
    double contraction = 0.0;
    const Status guarded = pass<true, true>(op, sample, e, drift, clip, clamped, contraction);
    if (guarded != Status::Success) return detail::refuse(state_.counters, guarded);
    state_.clamped_variances += clamped;
    state_.posterior_contraction = contraction;
    state_.centering_weight = sample.next_weight;
    ++state_.counters.steps;
    return Status::Success;
  }

  ParameterSet<Scalar>* params_;
  FilterAdamOptions options_;
  MomentumDrift<Scalar> drift_;
  State state_;
  // Scratch of the guarded pass: the new state, swapped in by the commit.
  BlockBuffers<Scalar> next_momentum_, next_ww_, next_wp_, next_pp_, next_average_;
  detail::GuardedUpdate<Scalar> guarded_;
  detail::MoveSentinel usable_;
};

}  // namespace kfopt
