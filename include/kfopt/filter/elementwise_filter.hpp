#pragma once
/// \file elementwise_filter.hpp
/// \brief The per-parameter Kalman filters behind the factorised Bayesian-filtering
/// optimizers (Aitchison 2018, "A unified theory of adaptive stochastic gradient descent as
/// Bayesian filtering", §2.1.1–2.1.2 and SI §4.1–4.2): the scalar weight filter (eq. 8–12),
/// the 2×2 weight–momentum filter (eq. 15–17 with the generic predict eq. 3 and the
/// Sherman–Morrison update eq. 7), the fixed point of the scalar filter, and the estimate
/// `e` of the Fisher information that both filters take.
///
/// Everything here acts on one parameter at a time and costs O(1) flops; the optimizers
/// (optim/bayes_filter/: filter_rmsprop.hpp, filter_adam.hpp, filter_fixed_point.hpp) loop over
/// the elements of their parameter blocks. The weight–momentum functions are templates over
/// the value type: Scalar, or `detail::Lanes<Scalar>` for one pair per SIMD lane
/// (core/lanes.hpp: branch-free selects, the rare branches taken only when a lane needs
/// them), with which FilterAdam runs its loop a packet at a time; both give the same bits.
/// Conventions of the paper: `g` is the gradient of the log-likelihood (the *negative* loss
/// gradient), `e` its Fisher-information sample, so that `Λ_like = e²`; the posterior mean
/// moves by `Σ_post g` (eq. 6).
///
/// **The likelihood scale S.** Every Bayesian-filter optimizer (these three and
/// KroneckerFilter) reads the gradient in storage as that of the negative log-likelihood of
/// the step's data, against a prior that stands for everything seen before. The gradient of
/// a *mean* loss over a batch is that of a likelihood as weak as one example: pass
/// `S · ∇(mean loss)` with S about the number of training examples N (for a summed loss over
/// a batch of k, S ≈ N/k), so that a pass over the data weighs as much as the whole training
/// set. With S too small the prior outweighs the data: the posterior variance stays near the
/// prior's σ² and the filter is not in the regime of its adaptive limit. FilterRmsProp then
/// takes SGD steps `σ² S ∇`; FilterAdam barely moves (`η² S ∇/(2η_p)` per step, see
/// filter_adam.hpp), so the loss stalls while every step returns Status::Success.
///
/// `State::posterior_contraction` shows it: `1 − Σσ²_post / (P σ²)`, the fraction of the
/// prior's variance σ² (the `prior_variance` option) that the data seen so far have removed,
/// over all P parameters (the weights' variances Σ_ww for FilterAdam, `tr Σ` for
/// KroneckerFilter). In the adaptive regime the posterior variance is `≈ η/|e| ≪ σ²` and the
/// contraction is near 1; below kfopt::weak_likelihood_contraction (1/2) the data have not
/// removed half of the prior's variance, and S is too small (typically by orders of
/// magnitude: raise it until the contraction is near 1 after the first steps). It accumulates
/// over steps and is slow to fall back, so a run near a minimum, where the gradients vanish,
/// keeps its value. It can be slightly negative when the prior's own noise lifts a variance
/// above σ² (or when the initial variance exceeds σ²).
///
/// **Rounding guards.** The scalar update is evaluated as `σ² / (1 + σ² e²)`, a ratio of
/// non-negative numbers: it cannot turn negative, and an overflowing `σ² e²` gives 0. The
/// 2×2 covariance can lose positive semi-definiteness through cancellation in
/// `Σ_pp − e² Σ_wp² / (1 + Σ_ww e²)` when it is nearly singular; `clamp_covariance` restores
/// it (the Schur complement `Σ_pp − Σ_wp²/Σ_ww` clamped at 0) and reports that it did, so
/// the optimizers count it. Nothing here ever produces a NaN from finite input.

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/lanes.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// Below this State::posterior_contraction the data have removed less than half of a
/// Bayesian-filter optimizer's prior variance: its likelihood scale S is too small (see
/// filter/elementwise_filter.hpp).
inline constexpr double weak_likelihood_contraction = 0.5;

/// `1 − posterior / prior` for the sum of the posterior variances over the parameters and
/// the prior's (P σ²); NaN when the prior's sum is not positive.
inline double posterior_contraction(double prior_variance_sum, double posterior_variance_sum) {
  if (!(prior_variance_sum > 0.0)) return std::numeric_limits<double>::quiet_NaN();
  return 1.0 - posterior_variance_sum / prior_variance_sum;
}

/// Where the sample `e` of the Fisher information `Λ_like = e eᵀ` comes from (Aitchison
/// 2018, §2.1 after eq. 6, and §2.2.8).
enum class FisherEstimate {
  /// `e = ∇`, the raw mini-batch gradient: the empirical Fisher. This is what RMSProp and
  /// Adam square; it is biased by the mean gradient (`⟨e²⟩ = ⟨∇⟩² + Var ∇`).
  Gradient,
  /// `e = ∇ − ĝ` with `ĝ` a bias-corrected exponential average of the past gradients (the
  /// paper's centered gradient, §2.2.8; at the first step `ĝ = 0`).
  Centered,
  /// `e` supplied by the caller each step, e.g. the gradient of targets sampled from the
  /// model's predictive distribution (the unbiased Fisher estimate of §2.1).
  Supplied,
};

/// Name of an estimate, for messages.
inline const char* to_string(FisherEstimate f) noexcept {
  switch (f) {
    case FisherEstimate::Gradient: return "gradient";
    case FisherEstimate::Centered: return "centered";
    case FisherEstimate::Supplied: return "supplied";
  }
  return "unknown";
}

/// Which moment a Bayesian-filtering optimizer's parameters currently hold.
///
/// The filter alternates a data update (eq. 4/6/7: prior → posterior) and a prediction
/// (eq. 3: posterior → next prior). The gradient must be evaluated at the *prior* mean
/// (eq. 5: `g = ∂ log P(d|z)/∂z at z = μ_prior`), which for the momentum filter is the
/// Nesterov look-ahead point (§2.2.4).
enum class FilterPhase {
  /// The parameters hold `μ_prior(t)`: evaluate the gradient here, then call `update()`.
  Prior,
  /// The parameters hold `μ_post(t)`: evaluate the model here if wanted, then `predict()`.
  Posterior,
};

/// Drift of one weight (eq. 8): `z(t+1) = keep · z(t) + N(0, noise)`, with `keep = 1 − A`,
/// `A = η²/(2σ²)` and `noise = Q = η²`, so that the stationary standard deviation is σ.
template <typename Scalar>
struct ScalarDrift {
  Scalar keep = Scalar(1);   ///< 1 − η²/(2σ²): the prior's decoupled weight decay (eq. 9)
  Scalar noise = Scalar(0);  ///< η², the variance injected per step (eq. 11)

  /// The model of eq. 8 for learning rate η ≥ 0 and stationary variance σ² > 0 (computed
  /// in double, then rounded once to Scalar).
  static ScalarDrift from(double eta, double sigma2) {
    return ScalarDrift{static_cast<Scalar>(1.0 - eta * eta / (2.0 * sigma2)),
                       static_cast<Scalar>(eta * eta)};
  }
};

/// Prediction of one weight's filter (eq. 9 and 11): `μ ← keep μ`, `σ² ← keep² σ² + η²`.
/// O(1); never fails (a non-negative variance stays non-negative).
template <typename Scalar>
inline void scalar_filter_predict(const ScalarDrift<Scalar>& drift, Scalar& mean,
                                  Scalar& variance) noexcept {
  mean *= drift.keep;
  variance = drift.keep * drift.keep * variance + drift.noise;
}

/// Posterior variance of one weight after observing `Λ_like = e²` (eq. 12, equivalently
/// eq. 4a: `1/σ²_post = 1/σ²_prior + e²`), evaluated as `σ²_prior / (1 + σ²_prior e²)`.
/// Non-negative for a non-negative prior; 0 when `σ²_prior e²` overflows. O(1).
template <typename Scalar>
inline Scalar scalar_filter_posterior_variance(Scalar prior, Scalar e) noexcept {
  const Scalar gain = prior * (e * e);  // σ²_prior e²
  if (!(gain <= std::numeric_limits<Scalar>::max())) return Scalar(0);
  return prior / (Scalar(1) + gain);
}

/// The fixed point of the scalar filter with decay (Aitchison 2018, §2.1.1 with the
/// weight-decay term of SI §4.1 kept): solving
/// `σ²_post = σ²_post (1 − η²/σ²) − σ⁴_post ⟨e²⟩ + η²` for the steady state gives
///
///     1/σ²_post = (1/(2σ²)) (1 + sqrt(1 + 4σ⁴⟨e²⟩/η²)),
///
/// evaluated as `2σ² / (1 + hypot(1, r))` with `r = 2σ² sqrt(⟨e²⟩)/η` (no overflow, no
/// division by ⟨e²⟩). Limits: `σ² sqrt⟨e²⟩ ≪ η` gives `σ²` (SGD with step σ²);
/// `σ² sqrt⟨e²⟩ ≫ η` gives `η / sqrt⟨e²⟩` (RMSProp/Adam's normalizer). Requires η > 0,
/// σ² > 0, ⟨e²⟩ ≥ 0. O(1).
template <typename Scalar>
inline Scalar fixed_point_posterior_variance(Scalar sigma2, Scalar eta,
                                             Scalar mean_square) noexcept {
  const Scalar r = Scalar(2) * sigma2 * std::sqrt(mean_square) / eta;
  return Scalar(2) * sigma2 / (Scalar(1) + std::hypot(Scalar(1), r));
}

/// Drift of a weight–momentum pair (eq. 15–16): `z = (w, p)`, `z(t+1) = F z(t) + N(0, Q)`
/// with `F = I − A`,
///
///     A = [ (η² + η_w²)/(2σ²)   −η  ]      Q = [ η_w²   0    ]
///         [ 0                  η_p ]          [ 0      η_p² ]
///
/// so `F = [[keep_w, η], [0, keep_p]]`.
template <typename Scalar>
struct MomentumDrift {
  Scalar keep_w = Scalar(1);    ///< 1 − (η² + η_w²)/(2σ²): decoupled weight decay of the prior
  Scalar coupling = Scalar(0);  ///< η: the weight moves by η·p per step
  Scalar keep_p = Scalar(1);    ///< 1 − η_p: momentum decay (Adam's β1)
  Scalar noise_w = Scalar(0);   ///< η_w²: noise injected into the weight (§2.2.7)
  Scalar noise_p = Scalar(0);   ///< η_p²: noise injected into the momentum (eq. 15)

  /// The model of eq. 16 for η ≥ 0, η_p ∈ (0, 1], η_w ≥ 0, σ² > 0 (computed in double).
  static MomentumDrift from(double eta, double eta_p, double eta_w, double sigma2) {
    return MomentumDrift{static_cast<Scalar>(1.0 - (eta * eta + eta_w * eta_w) / (2.0 * sigma2)),
                         static_cast<Scalar>(eta), static_cast<Scalar>(1.0 - eta_p),
                         static_cast<Scalar>(eta_w * eta_w), static_cast<Scalar>(eta_p * eta_p)};
  }
};

/// The symmetric 2×2 covariance of a weight–momentum pair.
template <typename Scalar>
struct WeightMomentumCovariance {
  Scalar ww = Scalar(0);  ///< Σ_ww
  Scalar wp = Scalar(0);  ///< Σ_wp = Σ_pw
  Scalar pp = Scalar(0);  ///< Σ_pp
};

/// Restores positive semi-definiteness of a 2×2 covariance that rounding pushed outside:
/// negative variances go to 0, and a Schur complement `Σ_pp − Σ_wp²/Σ_ww` below 0 is
/// clamped to 0 by raising Σ_pp to `Σ_wp²/Σ_ww` (when Σ_ww = 0, Σ_wp is set to 0). Returns
/// whether anything was changed. O(1).
///
/// `T` is Scalar or `detail::Lanes<Scalar>` (core/lanes.hpp: one pair per SIMD lane, the
/// same operations in every lane, and a per-lane mask returned); the same holds for the
/// other functions on WeightMomentumCovariance below.
template <typename T>
inline detail::LaneMaskOf<T> clamp_covariance(WeightMomentumCovariance<T>& c) noexcept {
  using detail::select;
  const T zero(0);
  const auto negative_ww = detail::lanes_not_ge(c.ww, zero);  // !(Σ_ww >= 0)
  c.ww = select(negative_ww, zero, c.ww);
  const auto negative_pp = detail::lanes_not_ge(c.pp, zero);
  c.pp = select(negative_pp, zero, c.pp);
  const T wp2 = c.wp * c.wp;
  const auto outside = detail::lanes_lt(c.ww * c.pp, wp2);  // Σ_wp² > Σ_ww Σ_pp
  if (detail::any(outside)) {
    const auto weight_known = detail::lanes_lt(zero, c.ww);
    c.pp = select(outside & weight_known, wp2 / c.ww, c.pp);
    c.wp = select(detail::and_not(outside, weight_known), zero, c.wp);
  }
  return negative_ww | negative_pp | outside;
}

/// Prediction of a weight–momentum filter (eq. 3a/3b with eq. 16):
///
///     μ_w ← keep_w μ_w + η μ_p,          μ_p ← keep_p μ_p,
///     Σ   ← F Σ Fᵀ + Q.
///
/// Returns whether the covariance had to be clamped (see clamp_covariance). O(1).
template <typename Scalar, typename T>
inline detail::LaneMaskOf<T> momentum_filter_predict(const MomentumDrift<Scalar>& d, T& mean_w,
                                                     T& mean_p,
                                                     WeightMomentumCovariance<T>& c) noexcept {
  // Every product that meets a sum is a statement of its own, in the order of the formula
  // (core/lanes.hpp, "Contraction").
  const T kept = d.keep_w * mean_w;
  const T pushed = d.coupling * mean_p;
  mean_w = kept + pushed;
  mean_p = d.keep_p * mean_p;
  // F Σ Fᵀ with F = [[a, b], [0, f]]: (a, b) Σ (a, b)ᵀ, (a, b) Σ (0, f)ᵀ, f² Σ_pp.
  const Scalar a = d.keep_w, b = d.coupling, f = d.keep_p;
  const T ww_a = a * a * c.ww;
  const T ww_b = Scalar(2) * a * b * c.wp;
  const T ww_c = b * b * c.pp;
  const T wp_a = a * c.wp;
  const T wp_b = b * c.pp;
  const T pp_a = f * f * c.pp;
  c.ww = ww_a + ww_b + ww_c + d.noise_w;
  c.wp = f * (wp_a + wp_b);
  c.pp = pp_a + d.noise_p;
  return clamp_covariance(c);
}

/// Data update of a weight–momentum filter with `e = (e, 0)` (eq. 17) by Sherman–Morrison
/// (eq. 7): with `s = 1 + Σ_ww e²`,
///
///     Σ_ww ← Σ_ww / s,   Σ_wp ← Σ_wp / s,   Σ_pp ← Σ_pp − e² Σ_wp² / s.
///
/// The mean update (eq. 6 with `g = (g, 0)`) is then `μ_w += Σ_ww g`, `μ_p += Σ_wp g` with
/// the *posterior* entries. Returns whether the covariance had to be clamped. O(1).
template <typename T>
inline detail::LaneMaskOf<T> momentum_filter_update(WeightMomentumCovariance<T>& c, T e) noexcept {
  using Scalar = typename detail::LaneTraits<T>::Scalar;
  using detail::select;
  const T e2 = e * e;
  const T gain = c.ww * e2;
  // !(gain <= max): e² overflowed, the weight is pinned.
  const auto pinned = detail::lanes_not_ge(T(std::numeric_limits<Scalar>::max()), gain);
  const T s = Scalar(1) + gain;
  WeightMomentumCovariance<T> post{c.ww / s, c.wp / s, c.pp - e2 * c.wp * c.wp / s};
  if (detail::any(pinned)) {
    // A pinned weight: Σ_ww = Σ_wp = 0, and so is the part of p correlated with the weight.
    const T zero(0);
    const T pp = select(detail::lanes_lt(zero, c.ww), c.pp - c.wp * c.wp / c.ww, c.pp);
    post.ww = select(pinned, zero, post.ww);
    post.wp = select(pinned, zero, post.wp);
    post.pp = select(pinned, pp, post.pp);
  }
  c = post;
  return clamp_covariance(c);
}

namespace detail {

/// Throws InvalidInputError unless the filter is in the `expected` phase.
inline void require_filter_phase(const char* operation, FilterPhase phase, FilterPhase expected) {
  if (phase == expected) return;
  const bool want_prior = expected == FilterPhase::Prior;
  throw InvalidInputError(
      std::string(operation) + ": the filter is in its " +
      (want_prior ? "posterior" : "prior") + " phase (parameters hold " +
      (want_prior ? "μ_post" : "μ_prior") + "); call " + (want_prior ? "predict()" : "update()") +
      " first");
}

/// The per-element source of `e` for one step: the raw gradient, the centered gradient
/// (`e = ∇ − ĝ`, then `ĝ ← ĝ + (∇ − ĝ)/w_t` with `w_t = β w_{t−1} + 1`, the bias-corrected
/// β-weighted mean of the gradients seen so far), or a caller-supplied buffer. The new ĝ is
/// written to a scratch buffer, committed by the optimizer only when the whole step is finite.
template <typename Scalar>
struct FisherSample {
  FisherEstimate kind = FisherEstimate::Gradient;
  Scalar inverse_weight = Scalar(1);  ///< 1/w_t (Centered)
  double next_weight = 0.0;           ///< w_t, committed with the step (Centered)

  /// `e` for element k of a block with gradient `grad`; `average` is that block's ĝ and
  /// `next_average` receives the updated ĝ (Centered), `supplied` the caller's e (Supplied).
  Scalar operator()(Eigen::Index k, Scalar grad, const Scalar* average, Scalar* next_average,
                    const Scalar* supplied) const {
    return lanes(k, grad, average, next_average, supplied);
  }
  /// The same for the elements [k, k + lanes) (T: Scalar or Lanes<Scalar>, core/lanes.hpp).
  template <typename T>
  T lanes(Eigen::Index k, const T& grad, const Scalar* average, Scalar* next_average,
          const Scalar* supplied) const {
    switch (kind) {
      case FisherEstimate::Gradient: return grad;
      case FisherEstimate::Centered: {
        const T old = lane_load<T>(average + k);
        const T e = grad - old;
        const T step = e * inverse_weight;
        lane_store(next_average + k, old + step);
        return e;
      }
      case FisherEstimate::Supplied: return lane_load<T>(supplied + k);
    }
    return grad;
  }
};

/// Checks a caller's `e` buffers against the blocks (ShapeError naming the block) and their
/// finiteness (returns false, writes nothing, for NaN/Inf).
template <typename Scalar>
bool check_supplied_fisher(const char* operation, const BlockBuffers<Scalar>& e,
                           const ParameterSet<Scalar>& params) {
  require_buffers_like(operation, "e (the supplied Fisher sample)", e, params);
  for (const auto& b : e) {
    if (!b.allFinite()) return false;
  }
  return true;
}

/// Throws InvalidInputError unless the call matches the configured Fisher estimate:
/// `update(e)` needs FisherEstimate::Supplied, `update()` the others.
inline void require_fisher_call(const char* operation, FisherEstimate kind, bool supplied) {
  if ((kind == FisherEstimate::Supplied) == supplied) return;
  throw InvalidInputError(std::string(operation) + ": options.fisher is '" + to_string(kind) +
                          "', so call " +
                          (kind == FisherEstimate::Supplied ? "the overload taking e"
                                                            : "the overload without e"));
}

/// The start of every element-wise filter's data update (filter RMSProp, filter Adam, the
/// fixed-point form): the call must match the Fisher estimate (InvalidInputError), the
/// storage must keep its shapes (ShapeError naming `operation`), a supplied `e` must be
/// finite (else NonFiniteInput, counted in `counters`, nothing written). The gradients and
/// the current parameters are checked by the update's GuardedUpdate pass, tile by tile
/// (core/step_guard.hpp). On Success `sample` is the step's source of e; for
/// FisherEstimate::Centered `sample.next_weight = β w_{t−1} + 1` (β = `centering_decay`),
/// which the optimizer commits with the rest of the step.
template <typename Scalar>
Status begin_data_update(const char* operation, FisherEstimate kind, double centering_decay,
                         const BlockBuffers<Scalar>* supplied, const ParameterSet<Scalar>& params,
                         StepCounters& counters, double centering_weight,
                         FisherSample<Scalar>& sample) {
  require_fisher_call(operation, kind, supplied != nullptr);
  require_storage(operation, params);
  if (supplied != nullptr && !check_supplied_fisher(operation, *supplied, params)) {
    return refuse(counters, Status::NonFiniteInput);
  }
  sample = FisherSample<Scalar>{kind, Scalar(1), centering_weight};
  if (kind == FisherEstimate::Centered) {
    sample.next_weight = centering_decay * centering_weight + 1.0;
    sample.inverse_weight = static_cast<Scalar>(1.0 / sample.next_weight);
  }
  return Status::Success;
}

/// Throws InvalidInputError naming the operation unless a restored centering weight is
/// finite and in [0, 1/(1 − β)] (w_t = β w_{t−1} + 1 never leaves that range).
inline void require_centering_weight(const char* operation, double weight, double decay) {
  if (!(std::isfinite(weight) && weight >= 0.0 && weight <= 1.0 / (1.0 - decay) * (1.0 + 1e-12))) {
    throw InvalidInputError(std::string(operation) + ": centering_weight = " +
                            std::to_string(weight) + " is outside [0, 1/(1 - centering_decay)]");
  }
}

/// Throws InvalidInputError naming the operation unless `phase` is a FilterPhase value.
inline void require_phase_value(const char* operation, FilterPhase phase) {
  if (phase != FilterPhase::Prior && phase != FilterPhase::Posterior) {
    throw InvalidInputError(std::string(operation) + ": phase holds no FilterPhase value");
  }
}

/// Throws InvalidInputError unless every entry of every buffer is finite and >= 0 (a
/// variance restored by set_state); ShapeError unless shaped like the blocks.
template <typename Scalar>
void require_nonnegative_buffers(const char* operation, const char* what,
                                 const BlockBuffers<Scalar>& buffers,
                                 const ParameterSet<Scalar>& params) {
  require_state_buffers(operation, what, buffers, params, BufferRange::NonNegative);
}

}  // namespace detail
}  // namespace kfopt
